"""The ORM mapping shared by the SQLAlchemy contenders (recipe and fastapi-asyncdb)."""

from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class World(Base):
    __tablename__ = "world"

    id: Mapped[int] = mapped_column(primary_key=True)
    randomnumber: Mapped[int]


class Fortune(Base):
    __tablename__ = "fortune"

    id: Mapped[int] = mapped_column(primary_key=True)
    message: Mapped[str] = mapped_column(String(2048))
