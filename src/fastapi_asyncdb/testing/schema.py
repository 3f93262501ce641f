"""The schema of the test database: from the app's metadata, or from its Alembic migrations.

``asyncdb_schema`` names it:

- ``metadata:myapp.models:Base.metadata``: ``create_all`` of that ``MetaData``;
- ``alembic:alembic.ini`` (relative to the directory of pytest's configuration file;
  ``alembic:alembic.ini@<revision>`` for another revision than ``head``): the
  migrations, run on the Database's own engine;
- nothing: the schema is the app's business (for example its lifespan migrates).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData

from ..database import Database

__all__ = ["Schema", "load_object", "parse_schema", "upgrade_with_alembic"]

Schema = Callable[[Database], Awaitable[None]]
"""Brings the started Database's (empty) database to the schema the tests need."""


def load_object(path: str) -> Any:
    """The object at ``module.name:attribute.path``."""
    module_name, separator, attributes = path.partition(":")
    if not separator or not module_name or not attributes:
        raise ValueError(f"{path!r} is not of the form 'package.module:attribute'")
    value: Any = importlib.import_module(module_name)
    for name in attributes.split("."):
        value = getattr(value, name)
    return value


def parse_schema(spec: str, base_directory: Path) -> Schema | None:
    kind, _, rest = spec.strip().partition(":")
    if not kind:
        return None
    if kind == "metadata":
        metadata = load_object(rest)
        if not isinstance(metadata, MetaData):
            raise ValueError(f"{rest!r} is a {type(metadata).__name__}, not a MetaData")
        return partial(create_from_metadata, metadata)
    if kind == "alembic":
        config_file, _, revision = rest.partition("@")
        path = base_directory / config_file
        if not path.is_file():
            raise ValueError(f"no Alembic configuration at {config_file!r}")
        return partial(upgrade_with_alembic, config_path=path, revision=revision or "head")
    raise ValueError(f"{spec!r}: the schema is 'metadata:module:attribute' or 'alembic:file.ini'")


async def create_from_metadata(metadata: MetaData, database: Database) -> None:
    async with database.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)


async def upgrade_with_alembic(
    database: Database, *, config_path: Path, revision: str = "head"
) -> None:
    """Upgrade the database to ``revision`` with ``database.migrate``.

    The env.py receives the connection as ``config.attributes["connection"]``; its URL
    is also set to the test database's, so an env.py that makes its own engine
    migrates the test database all the same, never the one its ini file names.
    """
    from alembic.config import Config

    config = Config(str(config_path))
    # configparser interpolates '%'.
    url = database.settings.url.get_secret_value().replace("%", "%%")
    config.set_main_option("sqlalchemy.url", url)
    await database.migrate(config, revision)
