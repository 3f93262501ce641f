"""The tables: accounts and the transfers between them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    func,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .schemas import MAX_CENTS

__all__ = ["Account", "Base", "Transfer"]

# Named constraints, so migrations can drop or alter them by name on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Owners may be any Unicode text: on MariaDB the column says utf8mb4 itself rather than
# inherit a server default that may be latin1 or the 3-byte utf8mb3.
OWNER_TYPE = String(200).with_variant(mysql.VARCHAR(200, charset="utf8mb4"), "mysql", "mariadb")

# Keys are opaque: MariaDB's default collation would make "abc" and "ABC" one key.
IDEMPOTENCY_KEY_TYPE = String(200).with_variant(
    mysql.VARCHAR(200, collation="utf8mb4_bin"), "mysql", "mariadb"
)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Account(Base):
    __tablename__ = "accounts"
    # The database, not only the code, refuses an overdraft and a balance past the maximum.
    __table_args__ = (
        CheckConstraint("balance >= 0", name="balance_non_negative"),
        CheckConstraint(f"balance <= {MAX_CENTS}", name="balance_at_most_max_cents"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(OWNER_TYPE)
    balance: Mapped[int] = mapped_column(BigInteger)


class Transfer(Base):
    __tablename__ = "transfers"
    __table_args__ = (CheckConstraint("amount > 0", name="amount_positive"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Unique: the database arbitrates between two requests racing with the same key.
    idempotency_key: Mapped[str] = mapped_column(IDEMPOTENCY_KEY_TYPE, unique=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    from_account: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    to_account: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
