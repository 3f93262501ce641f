"""Many transfers at once: money is neither created nor destroyed, no balance leaves its range."""

from __future__ import annotations

import asyncio
import itertools
import random

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.schemas import MAX_CENTS
from tests.ledger.blocking_ledger import BlockingLedger
from tests.ledger.ledger_api import LedgerApi

ACCOUNTS = 5
TRANSFERS = 40
OPENING_BALANCE = 100


async def test_concurrent_random_transfers_keep_the_total_and_no_balance_negative(
    fresh_api: LedgerApi,
) -> None:
    accounts = [await fresh_api.open_account(OPENING_BALANCE) for _ in range(ACCOUNTS)]
    rng = random.Random(20261125)
    plans: list[tuple[str, int, int, int]] = []
    for n in range(TRANSFERS):
        source, target = rng.sample(accounts, 2)
        plans.append((f"random-{n}", source, target, rng.randint(1, 60)))

    responses = await asyncio.gather(
        *(fresh_api.transfer(key, source, target, amount) for key, source, target, amount in plans)
    )

    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {201, 409}, [response.text for response in responses]
    assert 201 in statuses
    expected = dict.fromkeys(accounts, OPENING_BALANCE)
    for (_key, source, target, amount), status in zip(plans, statuses, strict=True):
        if status == 201:
            expected[source] -= amount
            expected[target] += amount
    balances = await fresh_api.balances(*accounts)
    assert balances == [expected[account] for account in accounts]
    assert min(balances) >= 0
    assert await fresh_api.total() == {"accounts": ACCOUNTS, "total": ACCOUNTS * OPENING_BALANCE}


@st.composite
def _credits_near_the_maximum(draw: st.DrawFn) -> tuple[int, list[int], list[bool]]:
    """The payee's headroom, concurrent credits around it, and which are sent twice."""
    headroom = draw(st.one_of(st.sampled_from([1, 2, 3]), st.integers(1, 10**6)))
    amount = st.one_of(st.sampled_from([1, headroom, headroom + 1]), st.integers(1, headroom + 1))
    amounts = draw(st.lists(amount, min_size=2, max_size=8))
    sent_twice = draw(st.lists(st.booleans(), min_size=len(amounts), max_size=len(amounts)))
    return headroom, amounts, sent_twice


_plans = itertools.count()


@settings(
    max_examples=6,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=_credits_near_the_maximum())
def test_concurrent_credits_near_the_maximum_apply_once_each_and_never_overflow(
    blocking_ledger: BlockingLedger, plan: tuple[int, list[int], list[bool]]
) -> None:
    headroom, amounts, sent_twice = plan
    api, run = blocking_ledger.api, next(_plans)
    payee = blocking_ledger.run(api.open_account(MAX_CENTS - headroom))
    # Each payer holds exactly its credit: only the payee's limit can refuse one.
    payers = [blocking_ledger.run(api.open_account(amount)) for amount in amounts]
    total_before = blocking_ledger.run(api.total())["total"]
    sends = [
        (f"near-max-{run}-{n}", payer, amount)
        for n, (payer, amount, twice) in enumerate(zip(payers, amounts, sent_twice, strict=True))
        for _ in range(2 if twice else 1)
    ]

    responses = blocking_ledger.concurrently(
        *(api.transfer(key, payer, payee, amount) for key, payer, amount in sends)
    )

    outcome: dict[str, httpx.Response] = {}
    for (key, _payer, _amount), response in zip(sends, responses, strict=True):
        assert response.status_code in (201, 409), response.text
        if key in outcome:  # the same request twice: one answer, applied at most once
            assert response.status_code == outcome[key].status_code
            assert response.json() == outcome[key].json() or response.status_code == 409
        outcome[key] = response
    applied = {key for key, response in outcome.items() if response.status_code == 201}
    final = blocking_ledger.run(api.balance(payee))
    credited = sum(amount for key, _payer, amount in set(sends) if key in applied)
    assert final == MAX_CENTS - headroom + credited <= MAX_CENTS
    for key, payer, amount in set(sends):
        assert blocking_ledger.run(api.balance(payer)) == (0 if key in applied else amount)
        if key not in applied:
            # Refused when the payee held at most what it holds now: it still would not fit.
            assert amount > MAX_CENTS - final
            assert "maximum balance" in outcome[key].json()["detail"]
    assert blocking_ledger.run(api.total())["total"] == total_before
