"""`python -m ledger` migrates then serves; `python -m ledger migrate` only migrates."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

import uvicorn

from fastapi_asyncdb import Database

from .app import create_app
from .migrate import upgrade


async def migrate() -> None:
    async with Database() as database:
        await upgrade(database)


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
    logging.basicConfig(level=logging.INFO, format="%(levelname)s [%(name)s] %(message)s")
    asyncio.run(migrate())
    if args.command == "serve":
        # Already migrated above, where a failure stops the process before it listens.
        app = create_app(migrate_on_startup=False)
        uvicorn.run(
            app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8000"))
        )


if __name__ == "__main__":
    main()
