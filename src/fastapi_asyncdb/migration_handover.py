"""Handing a connection to a project's Alembic env.py, and checking that it was used.

An env.py that connects by itself (Alembic's generic template: ``engine_from_config``
with alembic.ini's ``sqlalchemy.url``) would migrate some other database, and the
upgrade would then report "nothing to apply" on this one. While a connection is
handed over, ``sqlalchemy.url`` reads as a non-URL, so such an env.py fails before it
connects; and after the upgrade, the database must be at the revision asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError

from .errors import MigrationError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

__all__ = ["CONNECTION_KEY", "check_reached", "handing_over"]

# The key Alembic's cookbook uses to hand a connection to env.py.
CONNECTION_KEY = "connection"

# What env.py gets for ``sqlalchemy.url`` while a connection is handed over: not a URL,
# so an env.py that connects by itself fails before it migrates some other database.
NOT_A_URL = "(fastapi-asyncdb hands over a connection: config.attributes['connection'])"
IGNORED_CONNECTION = (
    "the project's env.py did not use the connection fastapi-asyncdb passes to it: "
    "make env.py `from fastapi_asyncdb.migrations import run_migrations; "
    "run_migrations(Base.metadata)`, or configure Alembic with "
    "`connection=config.attributes['connection']` (docs/migrations.md)"
)


@contextlib.contextmanager
def handing_over(config: Config, connection: Connection) -> Iterator[None]:
    """Give env.py ``connection``, and no URL to connect anywhere else with."""
    section = config.config_ini_section
    had_url = config.get_section_option(section, "sqlalchemy.url")
    config.attributes[CONNECTION_KEY] = connection
    if not _names_the_same_database(had_url, connection.engine.url):
        # An ini URL naming this very database (the pytest plugin sets it) may stay.
        config.set_section_option(section, "sqlalchemy.url", NOT_A_URL)
    try:
        yield
    except ArgumentError as error:
        if "Could not parse SQLAlchemy URL" not in str(error):
            raise
        raise MigrationError(
            f"{IGNORED_CONNECTION}; it tried alembic.ini's sqlalchemy.url instead, and "
            "migrated nothing"
        ) from None
    finally:
        config.attributes.pop(CONNECTION_KEY, None)
        if had_url is None:
            config.file_config.remove_option(section, "sqlalchemy.url")
        else:
            config.set_section_option(section, "sqlalchemy.url", had_url.replace("%", "%%"))


def _names_the_same_database(given: str | None, url: URL) -> bool:
    if not given:
        return False
    try:
        other = make_url(given)
    except (ArgumentError, ValueError):
        return False
    where = (other.get_backend_name(), other.host, other.port, other.database)
    return where == (url.get_backend_name(), url.host, url.port, url.database)


def check_reached(script: ScriptDirectory, revision: str, current: tuple[str, ...]) -> None:
    """Fail unless the database is at (or past) ``revision`` once the upgrade ran.

    An env.py that migrates elsewhere (its own URL, its own engine) leaves this database
    where it was, and the upgrade would otherwise pass as "nothing to apply".
    """
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    try:
        targets = {s.revision for s in script.get_revisions(revision) if s is not None}
        reached = {s.revision for s in script.iterate_revisions(current or "base", "base")}
    except (CommandError, RevisionError):
        return  # a relative target (``+1``): nothing fixed to compare with
    if not targets <= reached:
        raise MigrationError(
            f"after the upgrade this database is at {_names(current)}, not at "
            f"{_names(sorted(targets))}: {IGNORED_CONNECTION}"
        )


def _names(revisions: Sequence[str]) -> str:
    return ", ".join(revisions) if revisions else "(none)"
