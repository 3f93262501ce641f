"""A table for the tests, and helpers to create it on a started database."""

from __future__ import annotations

from sqlalchemy import CheckConstraint, ForeignKey, Integer, String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fastapi_asyncdb import Database


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    body: Mapped[str] = mapped_column(String(100), unique=True)


class Positive(Base):
    __tablename__ = "positives"
    __table_args__ = (CheckConstraint("value > 0", name="value_is_positive"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(Integer)


class Parent(Base):
    __tablename__ = "parents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)


class Child(Base):
    """A child whose foreign key is only checked at COMMIT (PostgreSQL and SQLite)."""

    __tablename__ = "children"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int] = mapped_column(
        ForeignKey("parents.id", deferrable=True, initially="DEFERRED")
    )


async def create_tables(database: Database) -> None:
    async with database.engine.begin() as connection:
        await connection.run_sync(Base.metadata.drop_all)
        # MariaDB has no deferrable constraints.
        tables = [
            table
            for table in Base.metadata.sorted_tables
            if table.name != "children" or database.backend.name != "mysql"
        ]
        await connection.run_sync(Base.metadata.create_all, tables=tables)


async def count_rows(database: Database, model: type[Base]) -> int:
    """Count through a fresh connection: what another client would see now."""
    async with database.engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(model))).scalar_one())
