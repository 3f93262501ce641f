"""Alembic migrations on a Database's own engine, one process at a time.

``Database.migrate`` runs ``alembic upgrade`` on the primary engine while holding the
database's migration lock (a backend method: PostgreSQL's advisory lock, MySQL's and
MariaDB's ``GET_LOCK``, SQLite's write transaction), so replicas starting together
take turns instead of racing to create the same tables. ``run_migrations`` is the
whole of a project's Alembic ``env.py``, and ``migrate_command`` is the
``fastapi-asyncdb migrate`` subcommand.

Alembic is imported only when migrations run: without the ``migrations`` extra the
package still imports, and running migrations says what to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from logging.config import fileConfig
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import MetaData, inspect, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .backends import Backend
from .errors import MigrationError, MigrationLockTimeoutError
from .migration_handover import CONNECTION_KEY, check_reached, handing_over, resolve_target
from .settings import DatabaseSettings

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory


__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "MigrationError",
    "MigrationLockTimeoutError",
    "MigrationResult",
    "MigrationStatus",
    "alembic_config",
    "downgrade",
    "migration_lock",
    "run_migrations",
    "status",
    "upgrade",
    "write_upgrade_sql",
]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'fastapi-asyncdb[migrations]'"
DEFAULT_LOCK_TIMEOUT = 60.0
SETTINGS_KEY = "fastapi_asyncdb.settings"
VERSION_TABLE = "alembic_version"
EXIT_BEHIND = 3


@dataclass(frozen=True)
class MigrationStatus:
    """Where the schema is against the migration scripts.

    ``pending`` lists the revisions an upgrade would apply, oldest first. A database at
    a revision the scripts do not know (migrated by a newer release) has none pending.
    """

    current: tuple[str, ...]
    heads: tuple[str, ...]
    pending: tuple[str, ...]

    @property
    def is_behind(self) -> bool:
        return bool(self.pending)


@dataclass(frozen=True)
class MigrationResult:
    """What an upgrade did: the revisions before and after, and those applied."""

    previous: tuple[str, ...]
    current: tuple[str, ...]
    applied: tuple[str, ...]


def alembic_config(config: str | os.PathLike[str] | Config) -> Config:
    """An Alembic ``Config`` from a path to an ini file, or the one given."""
    _require_alembic()
    from alembic.config import Config

    if isinstance(config, Config):
        return config
    path = Path(config)
    if not path.is_file():
        raise MigrationError(
            f"no Alembic configuration at {path}: pass the path of your alembic.ini "
            "(--config, or Database.migrate(config=...))"
        )
    return Config(str(path))


async def upgrade(
    engine: AsyncEngine,
    backend: Backend,
    config: str | os.PathLike[str] | Config,
    revision: str = "head",
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> MigrationResult:
    """Upgrade the schema to ``revision`` on ``engine``, holding the migration lock."""
    alembic = alembic_config(config)
    script = _script_directory(alembic)
    async with migration_lock(engine, backend, lock_timeout=lock_timeout) as connection:
        previous, current = await connection.run_sync(_upgrade, alembic, script, revision)
    return MigrationResult(previous, current, _revisions_between(script, current, previous))


async def downgrade(
    engine: AsyncEngine,
    backend: Backend,
    config: str | os.PathLike[str] | Config,
    revision: str,
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> None:
    """Downgrade the schema to ``revision``, holding the migration lock: for an operator
    rolling back a release, never at startup. Raises ``MigrationError`` if the database
    is not where the step leads afterwards (an env.py that ignored the connection)."""
    alembic = alembic_config(config)
    script = _script_directory(alembic)
    async with migration_lock(engine, backend, lock_timeout=lock_timeout) as connection:
        await connection.run_sync(_downgrade, alembic, script, revision)


def _downgrade(
    connection: Connection, config: Config, script: ScriptDirectory, revision: str
) -> None:
    from alembic import command
    from alembic.util import CommandError

    holds_lock_transaction = connection.in_transaction()
    previous = _current_revisions(connection)
    target = resolve_target(script, revision, previous, downgrade=True)
    if not holds_lock_transaction or connection.dialect.name != "sqlite":
        connection.commit()  # Alembic begins and commits its own transactions
    try:
        with handing_over(config, connection):
            command.downgrade(config, revision)
    except CommandError as error:
        raise MigrationError(f"alembic: {error}") from error
    check_reached(script, target, previous, _current_revisions(connection))
    connection.commit()


async def status(engine: AsyncEngine, config: str | os.PathLike[str] | Config) -> MigrationStatus:
    """The schema's revisions against the scripts' heads (Alembic's default version table)."""
    script = _script_directory(alembic_config(config))
    heads = tuple(script.get_heads())
    async with engine.connect() as connection:
        current = await connection.run_sync(_current_revisions)
    return MigrationStatus(current, heads, _revisions_between(script, heads, current))


@contextlib.asynccontextmanager
async def migration_lock(
    engine: AsyncEngine, backend: Backend, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT
) -> AsyncIterator[AsyncConnection]:
    """A connection of ``engine`` holding the database's migration lock.

    Every process migrating the same database (by its name) takes turns here. Rolled
    back if the block raises; the lock is released when the block ends, or dies with
    the connection if releasing fails.
    """
    name = lock_name(engine.url)
    async with engine.connect() as connection:
        if not await backend.acquire_migration_lock(connection, name, wait=0):
            logger.info(
                "another process is migrating this database; waiting up to %g s", lock_timeout
            )
            if not await backend.acquire_migration_lock(connection, name, wait=lock_timeout):
                raise MigrationLockTimeoutError(
                    f"the migration lock was not obtained within {lock_timeout:g} s: another "
                    "process is migrating this database (or died holding a connection "
                    "the server has not closed yet); retry, or raise the lock timeout"
                )
        try:
            yield connection
        except BaseException:
            await _quietly(connection, connection.rollback())
            raise
        finally:
            if not await _quietly(connection, backend.release_migration_lock(connection, name)):
                logger.warning("could not release the migration lock; closing its connection")


def lock_name(url: URL) -> str:
    """The lock's name: the same for every process on the database, at most 64 characters."""
    digest = hashlib.blake2b(str(url.database).encode(), digest_size=8).hexdigest()
    return f"fastapi-asyncdb-migrate-{digest}"


def run_migrations(target_metadata: MetaData | Sequence[MetaData] | None, **options: Any) -> None:
    """The whole of an Alembic ``env.py``: ``run_migrations(Base.metadata)``.

    Called from ``Database.migrate`` (or the ``fastapi-asyncdb migrate`` command), it
    migrates on the connection handed over, under the migration lock. Called from the
    ``alembic`` command, it starts a ``Database`` from the environment (``DATABASE_URL``,
    ``DB_*``) and takes the lock itself; with ``--sql`` it writes the SQL instead,
    connecting nowhere. ``options`` go to Alembic's ``context.configure``.
    """
    _require_alembic()
    from alembic import context

    config = context.config
    if context.is_offline_mode():
        _configure_offline(config, target_metadata, options)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection: Connection | None = config.attributes.get(CONNECTION_KEY)
    if connection is not None:
        _migrate_on(connection, target_metadata, options)
        return
    _configure_logging(config)
    asyncio.run(_migrate_from_environment(config, target_metadata, options))


def _migrate_on(
    connection: Connection, target_metadata: MetaData | Sequence[MetaData] | None, options: Any
) -> None:
    from alembic import context

    is_sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: batch mode rebuilds the table instead. Its DDL
        # is transactional, though Alembic assumes not: one transaction for the whole
        # upgrade, so that a failure leaves no revision half applied.
        **{"render_as_batch": is_sqlite, "transactional_ddl": is_sqlite or None, **options},
    )
    with context.begin_transaction():
        context.run_migrations()
        if is_sqlite:
            # Foreign keys are off while tables are rebuilt (the migration lock turns
            # them off); a rebuild that lost a referenced row must not commit.
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
            if broken:
                raise MigrationError(f"the migration broke {len(broken)} foreign key(s)")


async def _migrate_from_environment(
    config: Config, target_metadata: MetaData | Sequence[MetaData] | None, options: Any
) -> None:
    from .database import Database  # here only: the Database imports this module

    async with (
        Database(_settings(config)) as database,
        migration_lock(database.engine, database.backend) as connection,
    ):
        await connection.run_sync(_migrate_on, target_metadata, options)
        await connection.commit()


def _configure_offline(
    config: Config, target_metadata: MetaData | Sequence[MetaData] | None, options: Any
) -> None:
    from alembic import context

    # The URL only chooses the SQL dialect; nothing connects, and no secret is needed.
    url = _settings(config).sqlalchemy_url.set(password=None, query={})
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **{"render_as_batch": url.get_backend_name() == "sqlite", **options},
    )


def write_upgrade_sql(
    config: str | os.PathLike[str] | Config, revision: str, settings: DatabaseSettings
) -> None:
    """Write the SQL of the upgrade to ``revision`` for the settings' database, connecting
    nowhere: to the config's ``output_buffer``, or stdout."""
    from alembic import command
    from alembic.util import CommandError

    alembic = alembic_config(config)
    alembic.attributes[SETTINGS_KEY] = settings
    try:
        command.upgrade(alembic, revision, sql=True)
    except CommandError as error:
        raise MigrationError(f"alembic: {error}") from error


def _settings(config: Config) -> DatabaseSettings:
    settings = config.attributes.get(SETTINGS_KEY)
    return settings if isinstance(settings, DatabaseSettings) else DatabaseSettings()


def _configure_logging(config: Config) -> None:
    # What Alembic's own env.py templates do, when the ini file configures logging.
    if config.config_file_name is not None and config.file_config.has_section("formatters"):
        fileConfig(config.config_file_name, disable_existing_loggers=False)


def _upgrade(
    connection: Connection, config: Config, script: ScriptDirectory, revision: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    from alembic import command
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    # On SQLite the open transaction is the lock, and the migration runs inside it.
    holds_lock_transaction = connection.in_transaction()
    previous = _current_revisions(connection)
    try:
        script.get_revisions(previous)
    except (CommandError, RevisionError):
        raise MigrationError(
            f"the database is at {names(previous)}, which these migrations do not know: "
            "it was migrated by a newer release, or with other migrations"
        ) from None
    target = resolve_target(script, revision, previous, downgrade=False)
    if not holds_lock_transaction:
        connection.commit()  # Alembic begins and commits its own transactions
    try:
        with handing_over(config, connection):
            command.upgrade(config, revision)
    except CommandError as error:
        raise MigrationError(f"alembic: {error}") from error
    current = _current_revisions(connection)
    check_reached(script, target, previous, current)
    connection.commit()
    return previous, current


def _current_revisions(connection: Connection) -> tuple[str, ...]:
    # What Alembic's MigrationContext reads, without its log lines on every look.
    if not inspect(connection).has_table(VERSION_TABLE):
        return ()
    return tuple(connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())


def _script_directory(config: Config) -> ScriptDirectory:
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        return ScriptDirectory.from_config(config)
    except CommandError as error:
        raise MigrationError(f"alembic: {error}") from error


def _revisions_between(
    script: ScriptDirectory, upper: tuple[str, ...], lower: tuple[str, ...]
) -> tuple[str, ...]:
    """The revisions above ``lower`` up to ``upper``, oldest first; none if either is unknown."""
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    if not upper or set(upper) == set(lower):
        return ()
    try:
        revisions = [s.revision for s in script.iterate_revisions(upper, lower or "base")]
    except (CommandError, RevisionError):
        return ()
    return tuple(reversed(revisions))


def _require_alembic() -> None:
    try:
        import alembic  # noqa: F401
    except ImportError:
        raise MigrationError(
            f"migrations need Alembic, which is not installed: {INSTALL_HINT}"
        ) from None


async def _quietly(connection: AsyncConnection, step: Any) -> bool:
    """Await ``step``; if it fails, invalidate the connection (and what it holds)."""
    try:
        await step
    except Exception:
        with contextlib.suppress(Exception):
            await connection.invalidate()
        return False
    return True


def names(revisions: Sequence[str]) -> str:
    """Revisions for people: ``a, b``, or ``(none)``."""
    return ", ".join(revisions) if revisions else "(none)"
