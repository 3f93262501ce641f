"""``fastapi-asyncdb migrate``: the schema upgraded with Alembic, one process at a time."""

from __future__ import annotations

import argparse
import sys

from .database import Database
from .migrations import DEFAULT_LOCK_TIMEOUT, EXIT_BEHIND, alembic_config, names, write_upgrade_sql

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default="alembic.ini", help="the Alembic ini file (default: alembic.ini)"
    )
    parser.add_argument(
        "--revision", default="head", help="the revision to upgrade to (default: head)"
    )
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=DEFAULT_LOCK_TIMEOUT,
        metavar="SECONDS",
        help=f"longest wait for another process's migration (default: {DEFAULT_LOCK_TIMEOUT:g})",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--sql",
        action="store_true",
        help="write the SQL of the upgrade to stdout instead of running it (connects nowhere)",
    )
    mode.add_argument(
        "--check",
        action="store_true",
        help=f"migrate nothing; exit {EXIT_BEHIND} if the schema is behind the scripts' head",
    )


async def run(args: argparse.Namespace) -> int:
    database: Database = args.database  # constructed by cli.py, not started
    config = alembic_config(args.config)
    where = database.settings.masked_url
    if args.sql:
        print(f"{where}: SQL of the upgrade to {args.revision}", file=sys.stderr)
        write_upgrade_sql(config, args.revision, database.settings)
        return 0
    async with database:
        if args.check:
            found = await database.migration_status(config)
            if found.is_behind:
                print(
                    f"{where}: at {names(found.current)}, behind {names(found.heads)}: "
                    f"{len(found.pending)} to apply ({names(found.pending)})"
                )
                return EXIT_BEHIND
            print(f"{where}: at {names(found.current)}; heads {names(found.heads)}")
            return 0
        print(f"{where}: upgrading to {args.revision}")
        result = await database.migrate(config, args.revision, lock_timeout=args.lock_timeout)
    if result.previous == result.current:
        print(f"{where}: already at {names(result.current)}; nothing to apply")
    else:
        print(
            f"{where}: upgraded from {names(result.previous)} to {names(result.current)}"
            f" (applied {names(result.applied)})"
        )
    return 0
