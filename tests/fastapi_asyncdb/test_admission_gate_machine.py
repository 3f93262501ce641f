"""The gate under every order of enter, leave, cancel, timeout and close, on a real loop.

Hypothesis drives a state machine: each rule is one event (a unit of work arrives,
leaves, leaves and enters again in the same step, is cancelled; the gate closes for
shutdown; the clock moves; the loop runs one iteration or until idle). Events the
machine causes happen at once or are queued behind whatever the loop already has
ready, so they land between the gate's own callbacks (hand-offs, wake-ups,
timeouts) in any order. The loop is a ``SteppedLoop``: timeouts fire exactly when
the clock reaches them.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from fastapi_asyncdb import DatabaseUnavailableError
from fastapi_asyncdb.admission import Gate

from .test_admission_stepped_loop import MACHINE_SETTINGS, SteppedLoop

TIMEOUT = 1.0
RETRY_AFTER = 7
SHUTTING_DOWN = "the service is shutting down"
# Binary fractions, so that sums of them land exactly on a deadline.
CLOCK_STEPS = st.sampled_from([1 / 16, 1 / 4, 1 / 2, 15 / 16, 1.0])
MOST_WORKERS = 6
ANY_INDEX = st.integers(min_value=0, max_value=63)


def resolve(future: asyncio.Future[bool], result: bool) -> None:
    if not future.done():  # a queued release can find its holder cancelled meanwhile
        future.set_result(result)


@dataclass(eq=False)
class Visit:
    """One unit of work's passage through the gate."""

    arrival: int
    arrived_at: float
    arrived_in: int
    state: str = "waiting"  # then holding and left, or timed out, refused or cancelled
    entry: int | None = None
    waited: bool = False
    error: BaseException | None = None
    failed_at: float | None = None


@dataclass(eq=False)
class Worker:
    release: asyncio.Future[bool] | None = None
    task: asyncio.Task[None] | None = None


class GateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = SteppedLoop()
        self.gate: Gate | None = None
        self.workers: list[Worker] = []
        self.visits: list[Visit] = []
        self.arrivals = itertools.count()
        self.entries = itertools.count()
        self.last_waited_arrival = -1
        self.overtakes: list[str] = []
        # Set once the gate has closed: the first arrival after it, and the task
        # waiting for the units admitted before to leave.
        self.closed_before_arrival: int | None = None
        self.closed_at: float | None = None
        self.emptied: asyncio.Task[None] | None = None
        self.holding_when_emptied: int | None = None

    # The unit of work, as Database.transaction() runs it.

    async def work(self, worker: Worker) -> None:
        gate = self.gate
        assert gate is not None
        while True:
            visit = Visit(next(self.arrivals), self.loop.now, self.loop.iteration)
            self.visits.append(visit)
            try:
                await gate.enter()
            except DatabaseUnavailableError as error:
                refused = error.reason == SHUTTING_DOWN
                visit.state = "refused" if refused else "timed out"
                visit.error, visit.failed_at = error, self.loop.now
                return
            except asyncio.CancelledError:
                visit.state = "cancelled"
                raise
            self.admitted(visit)
            worker.release = self.loop.create_future()
            try:
                again = await worker.release
            finally:
                gate.leave()
                visit.state = "left"
                worker.release = None
            if not again:
                return

    def admitted(self, visit: Visit) -> None:
        visit.state, visit.entry = "holding", next(self.entries)
        # A waiter resumes in the iteration after the one it was granted a slot in;
        # waiters resume in the order they were granted, which must be arrival order.
        visit.waited = self.loop.iteration != visit.arrived_in
        if visit.waited:
            if visit.arrival < self.last_waited_arrival:
                self.overtakes.append(f"waiter {visit.arrival} granted after a later one")
            self.last_waited_arrival = visit.arrival

    def unfinished(self) -> list[Worker]:
        return [w for w in self.workers if w.task is not None and not w.task.done()]

    def holders(self) -> list[Worker]:
        return [w for w in self.unfinished() if w.release is not None and not w.release.done()]

    def count(self, state: str) -> int:
        return sum(visit.state == state for visit in self.visits)

    def act(self, deferred: bool, action: Any, *args: Any) -> None:
        """Now, between loop iterations; or queued behind whatever is ready."""
        if deferred:
            self.loop.call_soon(action, *args)
        else:
            action(*args)

    # Events.

    @initialize(capacity=st.integers(min_value=1, max_value=3))
    def open_gate(self, capacity: int) -> None:
        self.gate = Gate(capacity, timeout=TIMEOUT, retry_after=RETRY_AFTER)

    @precondition(lambda self: len(self.unfinished()) < MOST_WORKERS)
    @rule()
    def arrive(self) -> None:
        worker = Worker()
        worker.task = self.loop.create_task(self.work(worker))
        self.workers.append(worker)

    @precondition(lambda self: self.holders())
    @rule(index=ANY_INDEX, enter_again=st.booleans(), deferred=st.booleans())
    def release(self, index: int, enter_again: bool, deferred: bool) -> None:
        holders = self.holders()
        release = holders[index % len(holders)].release
        assert release is not None
        self.act(deferred, resolve, release, enter_again)

    @precondition(lambda self: self.unfinished())
    @rule(index=ANY_INDEX, deferred=st.booleans())
    def cancel(self, index: int, deferred: bool) -> None:
        unfinished = self.unfinished()
        task = unfinished[index % len(unfinished)].task
        assert task is not None
        self.act(deferred, task.cancel)

    @precondition(lambda self: self.gate is not None and self.emptied is None)
    @rule()
    def close(self) -> None:
        # Always queued: close() runs on the loop, as Database.stop() calls it.
        self.loop.call_soon(self.close_now)

    def close_now(self) -> None:
        gate = self.gate
        assert gate is not None
        self.closed_before_arrival = next(self.arrivals)
        self.closed_at = self.loop.now
        gate.close(SHUTTING_DOWN)
        self.emptied = self.loop.create_task(self.wait_until_emptied(gate))

    async def wait_until_emptied(self, gate: Gate) -> None:
        await gate.emptied()
        self.holding_when_emptied = self.count("holding")

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

    @precondition(lambda self: self.gate is not None)
    @invariant()
    def slots_are_accounted_for(self) -> None:
        gate = self.gate
        assert gate is not None
        assert 0 <= gate.in_use <= gate.capacity
        holding, waiting = self.count("holding"), self.count("waiting")
        # Between holders and holders plus waiters granted a slot but not yet resumed.
        assert holding <= gate.in_use <= holding + waiting
        assert 0 <= gate.waiting <= waiting
        assert not self.overtakes
        for task in self.loop.tasks:
            assert not task.done() or task.cancelled() or task.exception() is None

    @precondition(lambda self: self.gate is not None)
    @invariant()
    def once_closed_nobody_gets_in_and_emptied_waits_for_every_holder(self) -> None:
        closed = self.closed_before_arrival
        for visit in self.visits:
            if visit.state == "refused":
                assert closed is not None, "refused by a gate that is open"
                assert isinstance(visit.error, DatabaseUnavailableError)
                assert visit.error.retry_after == RETRY_AFTER
                assert self.closed_at is not None
                assert visit.failed_at is not None
                assert visit.failed_at >= self.closed_at
            if closed is not None and visit.arrival > closed:
                assert visit.entry is None, f"arrival {visit.arrival} admitted after close"
        if self.emptied is not None and self.emptied.done():
            assert self.holding_when_emptied == 0
            assert self.count("holding") == 0

    @precondition(lambda self: self.gate is not None)
    @invariant()
    def timed_out_waiters_got_unavailable_at_their_deadline(self) -> None:
        for visit in self.visits:
            if visit.state == "timed out":
                assert isinstance(visit.error, DatabaseUnavailableError)
                assert visit.error.retry_after == RETRY_AFTER
                assert visit.failed_at is not None
                assert visit.failed_at - visit.arrived_at >= TIMEOUT

    @precondition(lambda self: self.gate is not None and self.loop.is_idle())
    @invariant()
    def at_rest_no_slot_idles_while_someone_waits(self) -> None:
        gate = self.gate
        assert gate is not None
        waiting = [visit for visit in self.visits if visit.state == "waiting"]
        # Every slot entered and not yet left is held: none leaked, none given twice.
        assert gate.in_use == self.count("holding")
        assert gate.waiting == len(waiting)
        if gate.in_use < gate.capacity:
            assert not waiting, "a slot is free while a unit of work waits for one"
        for visit in waiting:
            assert self.loop.now - visit.arrived_at < TIMEOUT
            # Nobody who came later got in while this one waited.
            later = [v for v in self.visits if v.entry is not None and v.arrival > visit.arrival]
            assert not later, f"waiter {visit.arrival} overtaken"
        if self.emptied is not None:
            assert not waiting, "a closed gate keeps nobody waiting"
            assert self.emptied.done() == (self.count("holding") == 0)

    def teardown(self) -> None:
        try:
            if self.gate is not None:
                self.drain(self.gate)
        finally:
            self.loop.shut()

    def drain(self, gate: Gate) -> None:
        """Everyone leaves or times out; then the gate is empty and admits at once."""
        for _ in range(4 * len(self.workers) + 4):
            self.loop.settle()
            if not self.unfinished():
                break
            for worker in self.holders():
                assert worker.release is not None
                worker.release.set_result(False)
            self.loop.settle()
            self.loop.now += TIMEOUT
        assert not self.unfinished()
        assert (gate.in_use, gate.waiting) == (0, 0)
        newcomer = self.loop.create_task(gate.enter())
        self.loop.run_one_iteration()
        assert newcomer.done()
        if self.emptied is None:
            assert newcomer.exception() is None
            assert gate.in_use == 1
        else:
            # Closed for good: refused at once, even with every slot left.
            refusal = newcomer.exception()
            assert isinstance(refusal, DatabaseUnavailableError)
            assert refusal.reason == SHUTTING_DOWN
            assert gate.in_use == 0
            self.loop.settle()
            assert self.emptied.done()


def test_gate_keeps_its_invariants_under_any_order_of_enter_leave_cancel_timeout_close() -> None:
    run_state_machine_as_test(GateMachine, settings=MACHINE_SETTINGS)
