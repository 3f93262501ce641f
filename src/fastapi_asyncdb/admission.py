"""Admission control: may a unit of work start now? Decided before any connection is touched.

Two parts, both cheap on the hot path:

- ``Gate``: a FIFO limit equal to the pool's capacity. SQLAlchemy's async pool
  burns CPU when many tasks wait on it; waiting on a future costs nothing, and the
  wait ends in ``DatabaseUnavailableError`` at the acquire timeout. At shutdown the
  gate closes: it refuses everyone from then on and tells when the last unit admitted
  before has left.
- ``Breaker``: once a new connection cannot be made, the database is taken as
  down; requests fail fast instead of each waiting out a connect timeout, while one
  background probe watches for the database to come back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from .errors import DatabaseUnavailableError, UnavailableCause
from .metrics import RoleMetrics

__all__ = ["Breaker", "Gate"]

logger = logging.getLogger(__name__)


class Gate:
    """At most ``capacity`` units of work at once; the rest wait in arrival order.

    One rule keeps it fair and work-conserving under any interleaving: ``leave()``
    hands its slot to the oldest waiter whose turn is still pending, and frees it
    only when there is none. So a free slot means nobody waits, and ``enter()`` may
    take it without looking at the queue. Nothing else (a counter of waiters that a
    cancelled task updates only when it next runs) decides who gets in.

    ``enter`` and ``leave`` cost O(1) however many wait (``asyncio.Semaphore`` scans
    all its waiters on every acquire); ``waiting`` counts when asked.

    ``close()`` is final. It refuses the waiters, then queues one turn of its own for
    each slot in use: every ``leave()`` from then on hands its slot to the gate itself,
    as it would to the oldest waiter. So no slot is ever free again, and neither
    ``enter`` on a free slot nor ``leave`` with nobody waiting has a check to make.
    """

    def __init__(
        self,
        capacity: int,
        *,
        timeout: float,
        retry_after: float,
        metrics: RoleMetrics | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("a gate needs a capacity of at least 1")
        self.capacity = capacity
        self._timeout = timeout
        self._retry_after = retry_after
        self._free = capacity
        # The turns of the waiters still inside enter(), oldest first. A turn is
        # pending until it is granted (True), expires (False) or its task is
        # cancelled; a waiter removes its own turn when it leaves enter(), so the
        # turns of waiters that gave up are not kept until the next leave().
        self._turns: OrderedDict[asyncio.Future[bool], None] = OrderedDict()
        # Set by close(): why everyone is refused, and the turns that take back the
        # slots still in use, one each.
        self._refusal: str | None = None
        self._vacating: list[asyncio.Future[bool]] = []
        self._metrics = metrics

    @property
    def in_use(self) -> int:
        """Slots taken, counting those granted to waiters that have not resumed yet."""
        if self._refusal is not None:
            return sum(not slot.done() for slot in self._vacating)
        return self.capacity - self._free

    @property
    def waiting(self) -> int:
        """Waiters that can still be granted a slot: not timed out, cancelled or granted."""
        if self._refusal is not None:
            return 0  # the gate's own turns are not waiters
        # A copy, taken in one step: metrics exporters ask from threads of their own,
        # and iterating the queue while the loop changes it would raise.
        return sum(not turn.done() for turn in tuple(self._turns))

    async def enter(self) -> None:
        metrics = self._metrics
        if self._free:
            self._free -= 1
            if metrics is not None:
                metrics.gate_wait.observe_zero()
            return
        if self._refusal is not None:
            raise DatabaseUnavailableError(
                self._refusal, retry_after=self._retry_after, cause=UnavailableCause.DRAINING
            )
        loop = asyncio.get_running_loop()
        started = loop.time()
        turn: asyncio.Future[bool] = loop.create_future()
        self._turns[turn] = None
        deadline = loop.call_later(self._timeout, self._expire, turn)
        try:
            granted = await turn
        except BaseException:
            if turn.done() and not turn.cancelled() and turn.result():
                self.leave()  # granted a slot just as we were cancelled: pass it on
            raise
        finally:
            deadline.cancel()
            self._turns.pop(turn, None)
        if not granted:
            if self._refusal is not None:
                raise DatabaseUnavailableError(
                    self._refusal, retry_after=self._retry_after, cause=UnavailableCause.DRAINING
                )
            if metrics is not None:
                metrics.gate_timeouts += 1
            raise DatabaseUnavailableError(
                f"no database connection became free within {self._timeout:g} s",
                retry_after=self._retry_after,
                cause=UnavailableCause.POOL_EXHAUSTED,
            )
        if metrics is not None:
            metrics.gate_wait.observe(loop.time() - started)

    def _expire(self, turn: asyncio.Future[bool]) -> None:
        if not turn.done():
            turn.set_result(False)

    def leave(self) -> None:
        turns = self._turns
        while turns:
            turn, _ = turns.popitem(last=False)
            if not turn.done():
                turn.set_result(True)
                return
        self._free += 1

    def close(self, reason: str) -> None:
        """Refuse every unit of work from now on with ``reason``, the waiting ones at once.

        Final. The units admitted before go on; ``emptied()`` returns once the last of
        them has left. Call it on the event loop.
        """
        if self._refusal is not None:
            return
        self._refusal = reason
        for turn in self._turns:
            if not turn.done():
                turn.set_result(False)
        self._turns.clear()
        loop = asyncio.get_running_loop()
        self._vacating = [loop.create_future() for _ in range(self.capacity - self._free)]
        self._turns.update(dict.fromkeys(self._vacating))
        self._free = 0

    async def emptied(self) -> None:
        """Return once every unit admitted before ``close()`` has left the gate."""
        if self._refusal is None:
            raise RuntimeError("an open gate admits newcomers: close it before waiting for it")
        pending = [slot for slot in self._vacating if not slot.done()]
        if pending:
            # wait() rather than awaiting the turns: a cancelled caller leaves them pending.
            await asyncio.wait(pending)


class Breaker:
    """Fails fast while the database cannot be reached; a single probe closes it again.

    ``close()`` is final: it stops the probe, and a connection failure reported
    while or after it runs (by units of work still finishing at shutdown) starts
    none, so no task outlives the breaker.
    """

    def __init__(
        self,
        probe: Callable[[], Awaitable[object]],
        *,
        retry_after: float,
        probe_interval: float = 0.25,
        metrics: RoleMetrics | None = None,
    ) -> None:
        self._probe = probe
        self._retry_after = retry_after
        self._probe_interval = probe_interval
        self._probe_task: asyncio.Task[None] | None = None
        self._closed = False
        self._metrics = metrics
        self.is_open = False

    def check(self) -> None:
        if self.is_open:
            raise DatabaseUnavailableError(
                "the database cannot be reached",
                retry_after=self._retry_after,
                cause=UnavailableCause.BREAKER_OPEN,
            )

    def trip(self, cause: BaseException) -> None:
        """Open the breaker; safe to call from any code running on the event loop."""
        if self.is_open or self._closed:
            return
        self.is_open = True
        if self._metrics is not None:
            self._metrics.breaker_trips += 1
        # A DatabaseUnavailableError's reason is written for people and redacted; of
        # anything else, only the type (driver texts may hold what nobody checked).
        reason = (
            cause.reason
            if isinstance(cause, DatabaseUnavailableError)
            else f"cannot connect to the database ({type(cause).__name__})"
        )
        logger.warning("%s; failing fast until a probe succeeds", reason)
        self._probe_task = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        # close() sets _closed before it cancels us: a probe that swallows the
        # cancellation (asyncio.wait_for in some drivers, on Python 3.11) still ends here.
        while not self._closed:
            try:
                await self._probe()
            except asyncio.CancelledError:
                if task.cancelling():
                    raise  # close() stops us
                # Cancelled inside the probe, not by close(): a failed probe like any
                # other. Ending here would leave the breaker open with nobody probing.
            except Exception:
                pass
            else:
                self.is_open = False
                logger.warning("database reachable again")
                return
            if self._closed:
                return
            await asyncio.sleep(self._probe_interval)

    async def close(self) -> None:
        self._closed = True
        self.is_open = False
        # The task stays known until it has ended, so that a second close() waits too.
        task = self._probe_task
        if task is not None and not task.done():
            task.cancel()
            # wait() rather than awaiting the task: a cancellation of close() itself
            # must reach our caller, not be taken for the probe's.
            await asyncio.wait((task,))
