"""The ledger for the pgbouncer scenario: migrated directly, served through PgBouncer by 2 workers.

``python -m chaos.pgbouncer_ledger``. ``DATABASE_URL`` and ``DB_PGBOUNCER`` lead the
workers through PgBouncer; ``CHAOS_DIRECT_URL`` is the server itself, for the
migration, whose lock needs one server session (transaction pooling gives none).
"""

from __future__ import annotations

import os
import sys

import uvicorn

from fastapi_asyncdb import cli
from ledger.migrate import ALEMBIC_INI

WORKERS = 2


def main() -> None:
    through = {name: os.environ.get(name) for name in ("DATABASE_URL", "DB_PGBOUNCER")}
    os.environ["DATABASE_URL"] = os.environ["CHAOS_DIRECT_URL"]
    os.environ["DB_PGBOUNCER"] = "off"
    status = cli.main(["migrate", "--config", str(ALEMBIC_INI)])
    if status != 0:
        sys.exit(status)
    for name, value in through.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    # Migrated above: the workers must not try again, through PgBouncer.
    os.environ["LEDGER_MIGRATE_ON_STARTUP"] = "false"
    uvicorn.run(
        "ledger.app:create_app",
        factory=True,
        workers=WORKERS,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8000")),
    )


if __name__ == "__main__":
    main()
