"""Many transfers at once: money is neither created nor destroyed, and no balance goes negative."""

from __future__ import annotations

import asyncio
import random

from tests.ledger.ledger_api import LedgerApi

ACCOUNTS = 5
TRANSFERS = 40
OPENING_BALANCE = 100


async def test_concurrent_random_transfers_keep_the_total_and_no_balance_negative(
    api: LedgerApi,
) -> None:
    accounts = [await api.open_account(OPENING_BALANCE) for _ in range(ACCOUNTS)]
    rng = random.Random(20261125)
    plans: list[tuple[str, int, int, int]] = []
    for n in range(TRANSFERS):
        source, target = rng.sample(accounts, 2)
        plans.append((f"random-{n}", source, target, rng.randint(1, 60)))

    responses = await asyncio.gather(
        *(api.transfer(key, source, target, amount) for key, source, target, amount in plans)
    )

    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {201, 409}, [response.text for response in responses]
    assert 201 in statuses
    expected = dict.fromkeys(accounts, OPENING_BALANCE)
    for (_key, source, target, amount), status in zip(plans, statuses, strict=True):
        if status == 201:
            expected[source] -= amount
            expected[target] += amount
    balances = await api.balances(*accounts)
    assert balances == [expected[account] for account in accounts]
    assert min(balances) >= 0
    assert await api.total() == {"accounts": ACCOUNTS, "total": ACCOUNTS * OPENING_BALANCE}
