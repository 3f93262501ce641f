"""The breaker under every order of trip, check, probe outcome and close, on a real event loop.

Hypothesis drives a state machine on a ``SteppedLoop``: connection failures trip the
breaker from loop callbacks, the one probe in flight is answered (database up,
connection refused, or a cancellation raised inside the probe) at once or behind
whatever is ready, closes start and are cancelled, the clock moves past the probe
interval. After every event the breaker must be open exactly when the model says,
with one probe at most, and a close must leave no task behind.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from fastapi_asyncdb import DatabaseUnavailableError
from fastapi_asyncdb.admission import Breaker

from .test_admission_stepped_loop import MACHINE_SETTINGS, SteppedLoop

PROBE_INTERVAL = 0.25
RETRY_AFTER = 11
OUTCOMES = st.sampled_from(["up", "refused", "cancelled inside the probe"])
CLOCK_STEPS = st.sampled_from([PROBE_INTERVAL / 2, PROBE_INTERVAL, 2 * PROBE_INTERVAL])
ANY_INDEX = st.integers(min_value=0, max_value=63)


def answer_unless_cancelled(answer: asyncio.Future[str], outcome: str) -> None:
    if not answer.done():  # a queued answer can find its probe cancelled by close()
        answer.set_result(outcome)


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = SteppedLoop()
        self.breaker = Breaker(self.probe, retry_after=RETRY_AFTER, probe_interval=PROBE_INTERVAL)
        self.expect_open = False
        self.closing_started = False
        self.probes_running = 0
        self.overlapping_probes = 0
        self.answer: asyncio.Future[str] | None = None
        self.closers: list[asyncio.Task[None]] = []
        self.cancelled_closers: set[asyncio.Task[None]] = set()

    # The database, as the breaker sees it through its probe.

    async def probe(self) -> None:
        self.probes_running += 1
        self.overlapping_probes += self.probes_running > 1
        answer: asyncio.Future[str] = self.loop.create_future()
        self.answer = answer
        try:
            outcome = await answer
        finally:
            self.probes_running -= 1
            if self.answer is answer:
                self.answer = None
        if outcome == "refused":
            raise ConnectionRefusedError
        if outcome == "cancelled inside the probe":
            raise asyncio.CancelledError
        self.expect_open = False  # the breaker closes in this same step

    def connection_failed(self) -> None:
        self.breaker.trip(ConnectionRefusedError("refused"))
        if not self.closing_started:
            self.expect_open = True

    async def close(self) -> None:
        self.closing_started = True
        self.expect_open = False
        await self.breaker.close()

    def cancel_closer(self, closer: asyncio.Task[None]) -> None:
        if closer.cancel():
            self.cancelled_closers.add(closer)

    def act(self, deferred: bool, action: Any, *args: Any) -> None:
        if deferred:
            self.loop.call_soon(action, *args)
        else:
            action(*args)

    def probe_tasks(self) -> list[asyncio.Task[Any]]:
        return [task for task in self.loop.tasks if task not in self.closers]

    def probers(self) -> list[asyncio.Task[Any]]:
        return [task for task in self.probe_tasks() if not task.done()]

    # Events.

    @rule()
    def trip(self) -> None:
        # The engine reports a failed connect from code running on the loop.
        self.loop.call_soon(self.connection_failed)

    @precondition(lambda self: self.answer is not None and not self.answer.done())
    @rule(outcome=OUTCOMES, deferred=st.booleans())
    def answer_probe(self, outcome: str, deferred: bool) -> None:
        answer = self.answer
        assert answer is not None
        self.act(deferred, answer_unless_cancelled, answer, outcome)

    @rule()
    def start_close(self) -> None:
        self.closers.append(self.loop.create_task(self.close()))

    @precondition(lambda self: any(not closer.done() for closer in self.closers))
    @rule(index=ANY_INDEX, deferred=st.booleans())
    def cancel_close(self, index: int, deferred: bool) -> None:
        running = [closer for closer in self.closers if not closer.done()]
        self.act(deferred, self.cancel_closer, running[index % len(running)])

    @rule()
    def run_one_iteration(self) -> None:
        self.loop.run_one_iteration()

    @rule()
    def run_until_idle(self) -> None:
        self.loop.settle()

    @rule(seconds=CLOCK_STEPS)
    def advance_clock(self, seconds: float) -> None:
        self.loop.now += seconds

    # What must hold after every event.

    @invariant()
    def check_raises_exactly_while_open(self) -> None:
        assert self.breaker.is_open == self.expect_open
        if self.expect_open:
            with pytest.raises(DatabaseUnavailableError) as raised:
                self.breaker.check()
            assert raised.value.retry_after == RETRY_AFTER
        else:
            self.breaker.check()

    @invariant()
    def one_probe_at_most_and_one_while_open(self) -> None:
        assert self.overlapping_probes == 0
        probers = self.probers()
        assert len(probers) <= 1
        if self.expect_open:
            assert probers, "open with nobody probing: it would stay open for good"
        closing = any(not closer.done() for closer in self.closers)
        if not self.expect_open and not closing:
            assert not probers
        for task in self.probe_tasks():
            assert not task.done() or task.cancelled() or task.exception() is None

    @invariant()
    def a_close_ends_as_asked_and_leaves_no_task(self) -> None:
        for closer in self.closers:
            if not closer.done():
                continue
            if closer in self.cancelled_closers:
                assert closer.cancelled(), "close() swallowed its own cancellation"
            else:
                assert closer.exception() is None
                assert not self.probers()

    @precondition(lambda self: self.closing_started and self.loop.is_idle())
    @invariant()
    def closed_at_rest_leaves_no_task(self) -> None:
        assert not self.probers()
        assert not self.breaker.is_open

    def teardown(self) -> None:
        try:
            self.loop.settle()
            closer = self.loop.create_task(self.breaker.close())
            self.loop.settle()
            assert closer.done()
            assert closer.exception() is None
            assert not self.probers()
            assert not self.breaker.is_open
        finally:
            self.loop.shut()


def test_breaker_keeps_its_invariants_under_any_order_of_trip_probe_and_close() -> None:
    run_state_machine_as_test(BreakerMachine, settings=MACHINE_SETTINGS)
