"""The drain at shutdown: refuse new units of work, let those in flight end, cancel stragglers.

``Database.stop()`` drains before it disposes the engines, so that no unit of work is
cut mid-transaction by the disposal:

1. Every role's gate closes: units of work not yet admitted, queued ones included,
   are refused with ``DatabaseUnavailableError`` (503 + ``Retry-After`` over HTTP).
   A queued unit has done nothing yet, so refusing it loses nothing and its retry can
   go to another instance; admitting it would start work the deadline may cut.
2. The units admitted before go on, for at most ``drain_timeout`` seconds.
3. The tasks of units still running then are cancelled: each rolls its transaction
   back and gives its connection back, within ``rollback_grace`` seconds (a rollback
   is one round trip, like the readiness ping).
4. A connection still held after that (a task that ignores its cancellation) is
   closed outright, and the server rolls its transaction back. Left open, it would
   go back to a pool already disposed, and stay open until the process ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from .role import Role

__all__ = ["SHUTTING_DOWN", "drain"]

logger = logging.getLogger(__name__)

SHUTTING_DOWN = "the service is shutting down"


async def drain(roles: Sequence[Role], *, within: float, rollback_grace: float) -> None:
    """Close the roles' gates and wait for their units of work to end, cancelling late ones."""
    for role in roles:
        role.gate.close(SHUTTING_DOWN)
    in_flight = sum(role.gate.in_use for role in roles)
    if not in_flight:
        return
    logger.info("draining %d unit(s) of work, for at most %g s", in_flight, within)
    if await _emptied(roles, within):
        logger.info("drained: every unit of work ended")
        return
    stragglers = _tasks_holding_units(roles)
    logger.warning(
        "cancelling %d unit(s) of work still running after the drain timeout (%g s)",
        len(stragglers),
        within,
    )
    for task in stragglers:
        task.cancel(f"{SHUTTING_DOWN}: the drain timeout ran out")
    if await _emptied(roles, rollback_grace):
        logger.info("drained: the cancelled units of work rolled back")
        return
    # An isolated role's connection is the test's own, which ends it itself.
    holders = [held for role in roles if not role.isolated for held in role.held.values()]
    logger.warning(
        "%d unit(s) of work still hold a connection after their cancellation; closing it",
        len(holders),
    )
    for holder in holders:
        # Whatever fails here, the connection is gone either way.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(rollback_grace):
                await holder.connection.invalidate()


async def _emptied(roles: Sequence[Role], within: float) -> bool:
    try:
        async with asyncio.timeout(within):
            for role in roles:
                await role.gate.emptied()
    except TimeoutError:
        return False
    return True


def _tasks_holding_units(roles: Sequence[Role]) -> set[asyncio.Task[Any]]:
    # The draining task itself is spared: a unit of its own would be ended by its
    # own code once stop() returns.
    current = asyncio.current_task()
    return {
        held.task
        for role in roles
        for held in role.held.values()
        if held.task is not None and held.task is not current and not held.task.done()
    }
