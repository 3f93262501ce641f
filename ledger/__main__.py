"""`python -m ledger` migrates then serves; `python -m ledger migrate` only migrates."""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn

from fastapi_asyncdb import cli

from .app import create_app
from .migrate import ALEMBIC_INI


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ledger", description=__doc__)
    parser.add_argument(
        "command",
        nargs="?",
        choices=("serve", "migrate"),
        default="serve",
        help="serve (default): migrate, then run the HTTP server; migrate: migrate only",
    )
    args = parser.parse_args(argv)
    # fastapi-asyncdb's own command, on the database of DATABASE_URL and DB_*.
    status = cli.main(["migrate", "--config", str(ALEMBIC_INI)])
    if status != 0 or args.command == "migrate":
        sys.exit(status)
    # Already migrated above, where a failure stops the process before it listens.
    app = create_app(migrate_on_startup=False)
    uvicorn.run(
        app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8000"))
    )


if __name__ == "__main__":
    main()
