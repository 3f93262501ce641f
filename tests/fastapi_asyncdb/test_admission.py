from __future__ import annotations

import asyncio
import time

import pytest

from fastapi_asyncdb import DatabaseUnavailableError
from fastapi_asyncdb.admission import Breaker, Gate

from .test_admission_stepped_loop import SteppedLoop


async def test_gate_admits_up_to_capacity_without_waiting() -> None:
    gate = Gate(2, timeout=1, retry_after=1)
    await gate.enter()
    await gate.enter()
    assert (gate.in_use, gate.waiting) == (2, 0)
    gate.leave()
    gate.leave()
    assert gate.in_use == 0


async def test_gate_serves_waiters_in_arrival_order() -> None:
    gate = Gate(1, timeout=5, retry_after=1)
    await gate.enter()
    order: list[int] = []

    async def wait(number: int) -> None:
        await gate.enter()
        order.append(number)
        gate.leave()

    waiters = [asyncio.create_task(wait(number)) for number in range(5)]
    await asyncio.sleep(0)
    assert gate.waiting == 5
    # A newcomer must not overtake the queue when a slot frees up.
    gate.leave()
    late = asyncio.create_task(wait(99))
    await asyncio.gather(*waiters, late)
    assert order == [0, 1, 2, 3, 4, 99]


async def test_gate_wait_ends_in_unavailable_at_the_timeout() -> None:
    gate = Gate(1, timeout=0.2, retry_after=3)
    await gate.enter()
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as caught:
        await gate.enter()
    assert 0.19 <= time.monotonic() - started < 0.4
    assert caught.value.retry_after == 3
    assert (gate.in_use, gate.waiting) == (1, 0)


async def test_timed_out_and_cancelled_waiters_do_not_swallow_slots() -> None:
    gate = Gate(1, timeout=0.1, retry_after=1)
    await gate.enter()
    timed_out = asyncio.create_task(gate.enter())
    cancelled = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(DatabaseUnavailableError):
        await timed_out
    gate.leave()
    assert gate.in_use == 0
    await gate.enter()
    assert gate.in_use == 1


async def test_waiter_cancelled_just_as_it_is_granted_passes_the_slot_on() -> None:
    gate = Gate(1, timeout=5, retry_after=1)
    await gate.enter()
    first = asyncio.create_task(gate.enter())
    second = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    gate.leave()  # granted to `first`, which is cancelled before it resumes
    first.cancel()
    await second
    assert gate.in_use == 1
    assert gate.waiting == 0


async def test_slot_freed_past_a_cancelled_waiter_admits_a_newcomer_at_once() -> None:
    gate = Gate(1, timeout=0.05, retry_after=1)
    await gate.enter()
    cancelled = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    cancelled.cancel()  # it resumes, and stops waiting, only on the loop's next turn
    gate.leave()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await gate.enter()  # used to queue behind the cancelled waiter and time out
    assert loop.time() - started < 0.05
    assert (gate.in_use, gate.waiting) == (1, 0)
    await asyncio.gather(cancelled, return_exceptions=True)
    assert (gate.in_use, gate.waiting) == (1, 0)


def test_unit_of_work_entering_again_as_its_waiters_time_out_is_admitted_at_once() -> None:
    """SQLite's one writer slot: a worker commits and starts its next unit of work in
    the same step of the loop in which the writers queued behind it time out."""
    loop = SteppedLoop()
    try:
        gate = Gate(1, timeout=1, retry_after=1)
        released = loop.create_future()

        async def worker() -> None:
            await gate.enter()
            await released
            gate.leave()
            await gate.enter()

        holder = loop.create_task(worker())
        waiters = [loop.create_task(gate.enter()) for _ in range(3)]
        loop.settle()
        loop.now = 1.0  # the waiters' deadline: their timeouts fire next iteration,
        loop.call_soon(released.set_result, None)  # and the worker resumes after that
        loop.settle()
        assert holder.done()
        assert holder.exception() is None
        assert all(isinstance(w.exception(), DatabaseUnavailableError) for w in waiters)
        assert (gate.in_use, gate.waiting) == (1, 0)
    finally:
        loop.shut()


async def test_gate_stays_cheap_with_thousands_waiting() -> None:
    gate = Gate(1, timeout=10, retry_after=1)
    await gate.enter()

    async def pass_through() -> None:
        await gate.enter()
        gate.leave()

    waiters = [asyncio.create_task(pass_through()) for _ in range(5000)]
    await asyncio.sleep(0)
    started = time.process_time()
    gate.leave()
    await asyncio.gather(*waiters)
    assert time.process_time() - started < 2
    assert gate.in_use == 0


async def test_breaker_fails_fast_until_its_probe_succeeds() -> None:
    attempts = 0

    async def probe() -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionRefusedError

    breaker = Breaker(probe, retry_after=2, probe_interval=0.01)
    breaker.check()
    breaker.trip(ConnectionRefusedError())
    with pytest.raises(DatabaseUnavailableError, match="cannot be reached"):
        breaker.check()
    for _ in range(100):
        if not breaker.is_open:
            break
        await asyncio.sleep(0.01)
    breaker.check()
    assert attempts == 3
    await breaker.close()


async def test_breaker_keeps_probing_when_its_probe_raises_a_cancellation_of_its_own() -> None:
    attempts = 0

    async def probe() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise asyncio.CancelledError  # e.g. a driver timeout inside the connect

    breaker = Breaker(probe, retry_after=1, probe_interval=0.01)
    breaker.trip(ConnectionRefusedError())
    for _ in range(100):
        if not breaker.is_open:
            break
        await asyncio.sleep(0.01)
    assert not breaker.is_open
    assert attempts == 2
    await breaker.close()


async def test_breaker_tripped_during_or_after_close_starts_no_probe() -> None:
    async def probe() -> None:
        await asyncio.sleep(10)

    breaker = Breaker(probe, retry_after=1)
    breaker.trip(ConnectionRefusedError())
    closing = asyncio.create_task(breaker.close())
    await asyncio.sleep(0)
    breaker.trip(ConnectionRefusedError())
    await closing
    breaker.trip(ConnectionRefusedError())
    breaker.check()
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_breaker_close_passes_its_own_cancellation_on_and_every_close_waits() -> None:
    async def probe() -> None:
        await asyncio.sleep(10)

    breaker = Breaker(probe, retry_after=1)
    breaker.trip(ConnectionRefusedError())
    await asyncio.sleep(0)
    cancelled_close = asyncio.create_task(breaker.close())
    second_close = asyncio.create_task(breaker.close())
    await asyncio.sleep(0)
    cancelled_close.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled_close
    await second_close
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_closed_gate_refuses_waiters_and_newcomers_and_empties_when_holders_leave() -> None:
    gate = Gate(2, timeout=5, retry_after=4)
    await gate.enter()
    await gate.enter()
    waiter = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    gate.close("the service is shutting down")
    for refused in (waiter, asyncio.create_task(gate.enter())):
        with pytest.raises(DatabaseUnavailableError) as caught:
            await refused
        assert (caught.value.reason, caught.value.retry_after) == (
            "the service is shutting down",
            4,
        )
    emptied = asyncio.create_task(gate.emptied())
    gate.leave()
    await asyncio.sleep(0)
    assert (gate.in_use, gate.waiting, emptied.done()) == (1, 0, False)
    gate.leave()
    await emptied
    assert gate.in_use == 0
    # Every slot is back, and still nobody gets in.
    with pytest.raises(DatabaseUnavailableError):
        await gate.enter()


async def test_waiting_for_an_open_gate_to_empty_is_refused() -> None:
    with pytest.raises(RuntimeError, match="close it"):
        await Gate(1, timeout=1, retry_after=1).emptied()
