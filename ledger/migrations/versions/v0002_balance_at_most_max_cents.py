"""No balance past MAX_CENTS; owner names in utf8mb4 on MariaDB.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The value of ledger.schemas.MAX_CENTS when this revision was written, copied rather than
# imported: a revision must mean the same thing whatever the code becomes later.
MAX_CENTS = 2**53 - 1
CONSTRAINT = "ck_accounts_balance_at_most_max_cents"
_MYSQL = ("mysql", "mariadb")


def upgrade() -> None:
    bind = op.get_bind()
    # Checked first so the refusal says what to do; the ALTER itself would fail with a
    # bare constraint error (or, on SQLite, while copying the table).
    over = bind.execute(
        sa.text("SELECT COUNT(*) FROM accounts WHERE balance > :limit"), {"limit": MAX_CENTS}
    ).scalar_one()
    if over:
        raise RuntimeError(
            f"{over} account(s) hold more than {MAX_CENTS} cents, which revision 0002"
            " forbids; move the excess out of them, then migrate again"
        )
    # On SQLite batch mode rebuilds the table (copy, drop, rename); elsewhere it is an ALTER.
    with op.batch_alter_table("accounts") as batch:
        batch.create_check_constraint(op.f(CONSTRAINT), f"balance <= {MAX_CENTS}")
        if bind.dialect.name in _MYSQL:
            batch.alter_column(
                "owner",
                type_=mysql.VARCHAR(200, charset="utf8mb4"),
                existing_type=sa.String(200),
                existing_nullable=False,
            )


def downgrade() -> None:
    bind = op.get_bind()
    with op.batch_alter_table("accounts") as batch:
        batch.drop_constraint(op.f(CONSTRAINT), type_="check")
        if bind.dialect.name in _MYSQL:
            batch.alter_column(
                "owner",
                type_=sa.String(200),
                existing_type=mysql.VARCHAR(200, charset="utf8mb4"),
                existing_nullable=False,
            )
