"""The ledger's tests are isolated by the plugin's rollback, and the leak check would see a leak."""

from __future__ import annotations

from tests.ledger.ledger_api import LedgerApi
from tests.ledger.rows import ledger_rows


async def test_what_an_isolated_test_commits_is_invisible_to_other_connections(
    api: LedgerApi, ledger_isolated_url: str
) -> None:
    alice, bob = await api.open_account(100), await api.open_account(0)
    assert (await api.transfer("seen-only-here", alice, bob, 40)).status_code == 201

    assert await ledger_rows(ledger_isolated_url) == {"accounts": 0, "transfers": 0}


async def test_the_leak_check_counts_rows_committed_outside_the_isolation(
    fresh_api: LedgerApi, empty_database_url: str
) -> None:
    alice, bob = await fresh_api.open_account(100), await fresh_api.open_account(0)
    assert (await fresh_api.transfer("committed", alice, bob, 40)).status_code == 201

    assert await ledger_rows(empty_database_url) == {"accounts": 2, "transfers": 1}
