"""The databases one exporter reports: one per pool name, the one registered last.

Each Prometheus registry and each OpenTelemetry meter provider holds one
``ExportedDatabases``. The pool name (``DB_POOL_NAME``) is read when metrics are read,
not when a database is registered, so ``db.configure(pool_name=...)`` applies at the
next scrape. Databases are held weakly: an app built again in the same process (a test
suite, a reload) leaves its old database to the garbage collector, and while it lives
the new one, registered last, is the one reported under the shared name.

Two databases sharing a pool name while both run is a mistake the exporters cannot
undo (the series would be one): the one registered last is reported and a WARNING names
``DB_POOL_NAME`` as the fix, once per database hidden.
"""

from __future__ import annotations

import logging
import weakref

from .database import Database

__all__ = ["ExportedDatabases"]

logger = logging.getLogger(__name__)


class ExportedDatabases:
    """Databases registered with one exporter, weakly, in the order they came."""

    def __init__(self) -> None:
        # Replaced whole, never changed in place: a scrape on the exporter's own
        # thread iterates the list it read while the event loop registers.
        self._refs: tuple[weakref.ref[Database], ...] = ()
        self._warned: weakref.WeakSet[Database] = weakref.WeakSet()

    def add(self, database: Database) -> bool:
        """Register ``database``; False if it already was."""
        alive = self._alive()
        if any(known is database for known in alive):
            return False
        pool = database.metrics.pool
        if any(known.metrics.pool == pool and not known.is_started for known in alive):
            logger.info("metrics of pool %r now come from another Database", pool)
        self._refs = (*(weakref.ref(known) for known in alive), weakref.ref(database))
        self.current()  # warns now if the database it hides is running
        return True

    def current(self) -> list[Database]:
        """The databases to report, one per pool name, in the order they came."""
        alive = self._alive()
        reported: dict[str, Database] = {}
        for database in alive:
            reported[database.metrics.pool] = database
        for database in alive:
            pool = database.metrics.pool
            if reported[pool] is not database and database.is_started:
                self._warn(database, pool)
        # dict order is that of each name's first database: stable across renames.
        return list(reported.values())

    def reports(self, database: Database) -> bool:
        """Whether ``database`` is the one reported under its pool name now.

        Cheap enough for every recorded duration: a few databases at most are compared.
        """
        pool = database.metrics.pool
        for ref in reversed(self._refs):
            known = ref()
            if known is not None and known.metrics.pool == pool:
                return known is database
        return False

    def _alive(self) -> list[Database]:
        return [database for ref in self._refs if (database := ref()) is not None]

    def _warn(self, database: Database, pool: str) -> None:
        if database in self._warned:
            return
        self._warned.add(database)
        logger.warning(
            "two running Databases share DB_POOL_NAME %r: metrics report only the one "
            "registered last; give each Database its own DB_POOL_NAME",
            pool,
        )
