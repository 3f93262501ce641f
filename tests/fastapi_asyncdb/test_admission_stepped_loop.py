"""A real event loop run one iteration at a time on a clock moved by hand, for the machines.

The admission state machines drive the gate and the breaker through it: every
interleaving of callbacks is reachable, timeouts fire exactly when due, and nothing
depends on how loaded the machine running the tests is. The tests here pin down the
two properties the machines rely on.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine, Generator
from typing import Any

from hypothesis import HealthCheck, settings

# More with ADMISSION_EXAMPLES=<n> for a long search; the default keeps the suite quick.
MACHINE_SETTINGS = settings(
    max_examples=int(os.environ.get("ADMISSION_EXAMPLES", "400")),
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class SteppedLoop(asyncio.SelectorEventLoop):
    """A real selector event loop run one iteration at a time, on a clock moved by hand.

    Every task created on it is kept in ``tasks``, so that a test can see tasks the
    code under test starts.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.iteration = 0
        self.tasks: list[asyncio.Task[Any]] = []
        self.set_task_factory(self._record_task)

    def _record_task(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Generator[Any, None, Any] | Coroutine[Any, Any, Any],
        **kwargs: Any,
    ) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        self.tasks.append(task)
        return task

    def time(self) -> float:
        return self.now

    def run_one_iteration(self) -> None:
        """Run what is ready now, timers due now included; what that schedules waits."""
        self.call_soon(self.stop)
        self.run_forever()
        self.iteration += 1

    def is_idle(self) -> bool:
        # No public API tells whether callbacks are pending: read BaseEventLoop's
        # ready queue and timer heap.
        ready: Any = getattr(self, "_ready")  # noqa: B009
        timers: list[asyncio.TimerHandle] = getattr(self, "_scheduled")  # noqa: B009
        return not ready and not any(
            not timer.cancelled() and timer.when() <= self.now for timer in timers
        )

    def settle(self) -> None:
        """Run iterations until nothing is ready and no timer is due."""
        while not self.is_idle():
            self.run_one_iteration()

    def shut(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.settle()
        self.close()


def test_stepped_loop_fires_a_timer_only_once_its_clock_reaches_the_deadline() -> None:
    loop = SteppedLoop()
    try:
        fired: list[float] = []
        loop.call_later(1.0, lambda: fired.append(loop.time()))
        loop.now = 1.0 - 1 / 1024
        loop.settle()
        assert fired == []
        loop.now = 1.0
        loop.settle()
        assert fired == [1.0]
    finally:
        loop.shut()


def test_stepped_loop_runs_one_iteration_and_leaves_what_it_schedules_for_the_next() -> None:
    loop = SteppedLoop()
    try:
        order: list[str] = []

        def first() -> None:
            order.append("first")
            loop.call_soon(order.append, "later")

        loop.call_soon(first)
        loop.call_soon(order.append, "second")
        loop.run_one_iteration()
        assert order == ["first", "second"]
        assert not loop.is_idle()
        loop.run_one_iteration()
        assert order == ["first", "second", "later"]
        assert loop.is_idle()
    finally:
        loop.shut()


def test_stepped_loop_keeps_every_task_created_on_it() -> None:
    loop = SteppedLoop()
    try:

        async def nothing() -> None:
            pass

        task = loop.create_task(nothing())
        loop.settle()
        assert loop.tasks == [task]
        assert task.done()
    finally:
        loop.shut()
