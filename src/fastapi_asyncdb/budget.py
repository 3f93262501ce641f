"""Workers x pools against what the server allows: the arithmetic, and the startup check.

Every worker process opens its own pools, so a configuration that fits one process
can exhaust the server once it runs in several; the server then refuses connections
under load, to this app and to every other client. One function does the arithmetic,
for the check ``Database.start`` runs and for the doctor, so both say the same numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from sqlalchemy.engine import Connection

from .backends import Backend, ConnectionLimits
from .errors import ConfigurationError
from .probe import Probe
from .settings import DatabaseSettings

__all__ = [
    "PROBE_CONNECTIONS",
    "ConnectionBudget",
    "LimitsReading",
    "check_budget",
    "connection_budget",
]

logger = logging.getLogger(__name__)

PROBE_CONNECTIONS = 1
"""The health probe's own connection, beside the pools, in each process."""

_FEWER = (
    "lower DB_POOL_SIZE, DB_MAX_OVERFLOW, DB_READ_POOL_SIZE or DB_READ_MAX_OVERFLOW, "
    "run fewer workers (DB_WORKERS, else WEB_CONCURRENCY)"
)


@dataclass(frozen=True)
class ConnectionBudget:
    """The most connections ``workers`` processes open, beside what they may open."""

    workers: int
    pool_size: int
    max_overflow: int
    read_pool_size: int
    read_max_overflow: int
    limits: ConnectionLimits

    @property
    def per_process(self) -> int:
        # The gates cap units of work at size + overflow per pool, a NullPool's too.
        return (
            self.pool_size
            + self.max_overflow
            + self.read_pool_size
            + self.read_max_overflow
            + PROBE_CONNECTIONS
        )

    @property
    def needed(self) -> int:
        return self.workers * self.per_process

    @property
    def available(self) -> int | None:
        """What this client may open; None when the limit is not known (a pooler's)."""
        if self.limits.max_connections is None:
            return None
        server = self.limits.max_connections - self.limits.reserved
        if self.limits.account_limit is None:
            return server
        return min(server, self.limits.account_limit)

    @property
    def fits(self) -> bool | None:
        available = self.available
        return None if available is None else self.needed <= available

    def advice(self) -> str:
        """What to change: fewer connections, or more from the limit that binds."""
        limits = self.limits
        server = (
            None if limits.max_connections is None else limits.max_connections - limits.reserved
        )
        if limits.account_limit is not None and (server is None or limits.account_limit < server):
            more = f"raise {limits.account_limit_detail}"
        else:
            more = "raise the server's max_connections"
        return f"{_FEWER}, or {more}"

    def arithmetic(self) -> str:
        """E.g. ``2 workers x (10 + 5 write + 10 + 5 read + 1 probe) = 62 connections; ...``."""
        workers = f"{self.workers} worker{'s' if self.workers != 1 else ''}"
        demand = (
            f"{workers} x ({self.pool_size} + {self.max_overflow} write + "
            f"{self.read_pool_size} + {self.read_max_overflow} read + "
            f"{PROBE_CONNECTIONS} probe) = {self.needed} connections"
        )
        limits = self.limits
        if limits.max_connections is None:
            return f"{demand}; {limits.limited_by} does not say what it allows"
        supply = f"{limits.limited_by} allows {limits.max_connections}"
        if limits.reserved:
            detail = f" ({limits.reserved_detail})" if limits.reserved_detail else ""
            server = limits.max_connections - limits.reserved
            supply += f" - {limits.reserved} reserved{detail} = {server}"
        if limits.account_limit is not None:
            supply += f", and {limits.account_limit_detail} {limits.account_limit}"
        return f"{demand}; {supply}"


def connection_budget(settings: DatabaseSettings, limits: ConnectionLimits) -> ConnectionBudget:
    """The budget of ``settings.workers`` processes with these settings' pools."""
    return ConnectionBudget(
        workers=settings.workers,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        read_pool_size=settings.effective_read_pool_size,
        read_max_overflow=settings.effective_read_max_overflow,
        limits=limits,
    )


class LimitsReading:
    """The server's limits, read once on the probe's connection for every startup check
    that needs them: the result, or the failure, is kept."""

    def __init__(self, backend: Backend, probe: Probe) -> None:
        self._backend, self._probe = backend, probe
        self._outcome: ConnectionLimits | BaseException | None = None
        self._done = False

    async def __call__(self) -> ConnectionLimits | None:
        if not self._done:
            try:
                self._outcome = await self._probe.read(self._read)
            except Exception as error:
                self._outcome = error
            self._done = True
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        return self._outcome

    def _read(self, connection: Connection) -> ConnectionLimits | None:
        limits = self._backend.connection_limits(connection)
        if limits is None:
            return None
        # On the same connection: the probe's is made as the read engine's are.
        return replace(limits, not_in_force=self._backend.limits_not_in_force(connection))


async def check_budget(
    settings: DatabaseSettings,
    backend: Backend,
    reading: LimitsReading,
) -> ConnectionBudget | None:
    """At startup: refuse (``ConfigurationError``) or warn, by ``DB_BUDGET_CHECK``.

    The probe reads the limits on a connection of its own, within ``health_timeout``.
    A server that does not answer is not this check's to judge: it logs why it checked
    nothing and the app starts, as it would without the check. Connections other clients hold
    are not counted: the app's own sibling workers and the previous deploy's processes
    are among them, so a rolling deploy would always look over budget (the doctor
    reports them).
    """
    if settings.budget_check == "off" or not backend.limits_connections:
        return None
    try:
        limits = await reading()
    except Exception as error:
        logger.warning(
            "connection budget not checked: the server's limits could not be read (%s); "
            "run `fastapi-asyncdb doctor` once the server answers",
            type(error).__name__,
        )
        return None
    if limits is None:
        return None
    budget = connection_budget(settings, limits)
    if budget.fits is None:
        logger.info("connection budget not checked: %s", budget.arithmetic())
    elif not budget.fits:
        message = f"more connections than {limits.limited_by} allows: {budget.arithmetic()}"
        if settings.budget_check == "refuse":
            raise ConfigurationError(
                f"{message}. To fix: {budget.advice()}; "
                "or set DB_BUDGET_CHECK=warn to start anyway."
            )
        logger.warning("%s; %s", message, budget.advice())
    return budget
