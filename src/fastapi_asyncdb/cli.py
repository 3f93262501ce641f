"""The ``fastapi-asyncdb`` command: ``migrate`` and ``doctor``, one module each.

Each subcommand is one module with ``add_arguments(parser)`` and
``async def run(args) -> int``, named in ``SUBCOMMANDS``. Every subcommand also gets
``--app``/``--database`` and finds in ``args.database`` the ``Database`` to work on,
constructed but not started: the app's own (with its settings), or one from the
environment (``DATABASE_URL``, ``DB_*``) as the app would build it.

Expected failures (bad settings, an unreachable database, a lock not obtained, no
alembic.ini, a failing migration) end with one line on stderr and exit status 1, never
a traceback; whatever is printed has the URL's secrets masked.
"""

from __future__ import annotations

import argparse
import asyncio
import configparser
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Protocol, cast

from sqlalchemy.exc import SQLAlchemyError

from .database import Database
from .errors import DatabaseError
from .fastapi.dependencies import STATE_KEY
from .redaction import is_secret_query_key
from .settings import DatabaseSettings

__all__ = ["SUBCOMMANDS", "Subcommand", "build_parser", "load_database", "main", "run_command"]

PROGRAM = "fastapi-asyncdb"
EXIT_FAILED = 1

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "migrate": (
        "fastapi_asyncdb.migrate_command",
        "upgrade the schema with Alembic, one process at a time",
    ),
    "doctor": (
        "fastapi_asyncdb.doctor",
        "check the settings against the live database and say what to change",
    ),
}
"""Subcommand name: (module, one-line help)."""


class Subcommand(Protocol):
    """What a subcommand's module provides."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    async def run(self, args: argparse.Namespace) -> int: ...


class CommandLineError(Exception):
    """A mistake on the command line, said in one line."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; the exit status is returned (the console script exits with it)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s [%(name)s] %(message)s")
    # Alembic's "Running upgrade" lines, and the wait for another process's migration.
    for name in ("alembic.runtime.migration", "fastapi_asyncdb.migrations"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        return asyncio.run(run_command(args))
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="Commands for apps built on fastapi-asyncdb."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = cast(Subcommand, importlib.import_module(module_name))
        sub = commands.add_parser(name, help=help_text, description=help_text)
        source = sub.add_mutually_exclusive_group()
        source.add_argument(
            "--app",
            metavar="MODULE:APP",
            help="the FastAPI app given to install(app, db): its Database and its settings",
        )
        source.add_argument(
            "--database",
            dest="database_path",
            metavar="MODULE:DB",
            help="the app's Database object (default: one from DATABASE_URL and DB_*)",
        )
        module.add_arguments(sub)
        sub.set_defaults(subcommand=module)
    return parser


async def run_command(args: argparse.Namespace) -> int:
    """Run the subcommand ``build_parser()`` parsed; expected failures print one line."""
    label = f"{PROGRAM} {args.command}"
    settings: DatabaseSettings | None = None
    try:
        database = load_database(app=args.app, database=args.database_path)
        settings = database.settings
        args.database = database
        return await cast(Subcommand, args.subcommand).run(args)
    except (DatabaseError, CommandLineError) as error:
        _fail(label, str(error), settings)
    except SQLAlchemyError as error:
        # A migration the database refused, say; hide_parameters keeps values out. The
        # first line says what; the SQL and the link that follow are for the logs.
        _fail(label, f"the database refused: {str(error).splitlines()[0]}", settings)
    except configparser.Error as error:
        # An alembic.ini that is not an ini file.
        reason = str(error.message).splitlines()[0]
        _fail(label, f"the configuration file cannot be read: {reason}", settings)
    except OSError as error:
        # The SQLite file's folder cannot be made, stdout was closed early...
        _fail(label, f"{type(error).__name__}: {error}", settings)
    return EXIT_FAILED


def load_database(*, app: str | None = None, database: str | None = None) -> Database:
    """The ``Database`` at ``database`` or installed on ``app``, else one from the environment."""
    if database is not None:
        found = _import(database)
        if not isinstance(found, Database):
            raise CommandLineError(
                f"{database} is a {type(found).__name__}, not a fastapi_asyncdb.Database"
            )
        return found
    if app is not None:
        found = getattr(getattr(_import(app), "state", None), STATE_KEY, None)
        if not isinstance(found, Database):
            raise CommandLineError(
                f"{app} has no Database installed: call install(app, db) where the app is "
                "built, or pass --database MODULE:DB"
            )
        return found
    return Database()


def _import(path: str) -> object:
    module_name, _, attributes = path.partition(":")
    if not module_name or not attributes:
        raise CommandLineError(f"{path!r} is not an import path like myapp.main:app")
    # As uvicorn does: the app's package is found from the current directory.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: object = importlib.import_module(module_name)
    except ImportError as error:
        raise CommandLineError(f"cannot import {module_name}: {error}") from None
    for attribute in attributes.split("."):
        try:
            found = getattr(found, attribute)
        except AttributeError:
            raise CommandLineError(f"{module_name} has no attribute {attributes}") from None
    return found


def _fail(label: str, message: str, settings: DatabaseSettings | None) -> None:
    print(f"{label}: error: {_mask(message, settings)}", file=sys.stderr)


def _mask(message: str, settings: DatabaseSettings | None) -> str:
    """The message with the URL's secrets masked, should anything below have quoted them."""
    if settings is None:
        return message
    url = settings.sqlalchemy_url
    secrets = [url.password] if url.password else []
    secrets += [v for k, v in url.query.items() if is_secret_query_key(k) and isinstance(v, str)]
    for secret in sorted((str(s) for s in secrets if s), key=len, reverse=True):
        message = message.replace(secret, "***")
    return message


if __name__ == "__main__":
    sys.exit(main())
