"""Transfers: the happy path, every refusal, and idempotency (sequential and racing)."""

from __future__ import annotations

import asyncio

import pytest

from ledger.schemas import MAX_CENTS
from tests.ledger.ledger_api import LedgerApi


async def test_transfer_moves_the_amount_and_is_readable(api: LedgerApi) -> None:
    alice, bob = await api.open_account(1000), await api.open_account(50)

    response = await api.transfer("t-1", alice, bob, 300)

    assert response.status_code == 201
    created = response.json()
    assert created == {"id": created["id"], "from_account": alice, "to_account": bob, "amount": 300}
    assert await api.balances(alice, bob) == [700, 350]
    fetched = await api.client.get(f"/transfers/{created['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == created


async def test_transfer_of_the_whole_balance_leaves_zero(api: LedgerApi) -> None:
    alice, bob = await api.open_account(80), await api.open_account(0)

    response = await api.transfer("all-in", alice, bob, 80)

    assert response.status_code == 201
    assert await api.balances(alice, bob) == [0, 80]


async def test_transfer_with_insufficient_funds_returns_409_and_changes_nothing(
    api: LedgerApi,
) -> None:
    alice, bob = await api.open_account(100), await api.open_account(0)

    response = await api.transfer("too-much", alice, bob, 101)

    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert await api.balances(alice, bob) == [100, 0]
    # The refused request did not consume its key: the same key works once funds suffice.
    retry = await api.transfer("too-much", alice, bob, 100)
    assert retry.status_code == 201


@pytest.mark.parametrize("missing", ["from", "to"])
async def test_transfer_involving_an_unknown_account_returns_404_and_changes_nothing(
    api: LedgerApi, missing: str
) -> None:
    known = await api.open_account(100)
    unknown = known + 1000
    source, target = (unknown, known) if missing == "from" else (known, unknown)

    response = await api.transfer("ghost", source, target, 10)

    assert response.status_code == 404
    assert await api.total() == {"accounts": 1, "total": 100}


async def test_transfer_to_the_same_account_returns_422(api: LedgerApi) -> None:
    alice = await api.open_account(100)

    response = await api.transfer("self", alice, alice, 10)

    assert response.status_code == 422
    assert await api.balance(alice) == 100


@pytest.mark.parametrize(
    "amount",
    [pytest.param(0, id="zero"), pytest.param(-5, id="negative"), pytest.param(1.5, id="float")],
)
async def test_transfer_of_a_non_positive_or_fractional_amount_returns_422(
    api: LedgerApi, amount: float
) -> None:
    alice, bob = await api.open_account(100), await api.open_account(0)
    body = {"from_account": alice, "to_account": bob, "amount": amount}

    response = await api.client.post("/transfers", json=body, headers={"Idempotency-Key": "k"})

    assert response.status_code == 422
    assert await api.balances(alice, bob) == [100, 0]


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("k" * 201, id="201-characters"),
        pytest.param("cl\u00e9", id="non-ascii"),
        pytest.param("k\x01", id="control-character"),
        pytest.param("k ", id="trailing-space"),
    ],
)
async def test_transfer_without_a_valid_idempotency_key_returns_422(
    api: LedgerApi, key: str | None
) -> None:
    alice, bob = await api.open_account(100), await api.open_account(0)
    body = {"from_account": alice, "to_account": bob, "amount": 1}
    # As a client sends it: UTF-8 octets.
    headers = {} if key is None else {b"Idempotency-Key": key.encode()}

    response = await api.client.post("/transfers", json=body, headers=headers)

    assert response.status_code == 422
    assert await api.balances(alice, bob) == [100, 0]


async def test_two_idempotency_key_headers_return_422_and_change_nothing(api: LedgerApi) -> None:
    alice, bob = await api.open_account(100), await api.open_account(0)
    body = {"from_account": alice, "to_account": bob, "amount": 1}
    headers = [("Idempotency-Key", "first"), ("idempotency-key", "second")]

    response = await api.client.post("/transfers", json=body, headers=headers)

    assert response.status_code == 422, response.text
    assert "Idempotency-Key" in response.text or "idempotency-key" in response.text
    assert "more than once" in response.text
    assert await api.balances(alice, bob) == [100, 0]


async def test_idempotency_key_of_exactly_200_printable_characters_is_accepted(
    api: LedgerApi,
) -> None:
    alice, bob = await api.open_account(100), await api.open_account(0)
    key = ("a b~!" * 40)[:200]

    first = await api.transfer(key, alice, bob, 1)
    again = await api.transfer(key, alice, bob, 1)

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert await api.balances(alice, bob) == [99, 1]


async def test_retried_transfer_returns_the_same_transfer_and_applies_once(api: LedgerApi) -> None:
    alice, bob = await api.open_account(1000), await api.open_account(0)

    first = await api.transfer("retry-me", alice, bob, 250)
    second = await api.transfer("retry-me", alice, bob, 250)

    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert await api.balances(alice, bob) == [750, 250]


async def test_reused_key_with_a_different_body_returns_422_and_changes_nothing(
    api: LedgerApi,
) -> None:
    alice, bob = await api.open_account(1000), await api.open_account(0)
    assert (await api.transfer("reused", alice, bob, 100)).status_code == 201

    response = await api.transfer("reused", alice, bob, 200)

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert await api.balances(alice, bob) == [900, 100]


async def test_idempotency_keys_differing_only_in_case_are_distinct(api: LedgerApi) -> None:
    alice, bob = await api.open_account(1000), await api.open_account(0)

    lower = await api.transfer("key-a", alice, bob, 10)
    upper = await api.transfer("KEY-A", alice, bob, 10)

    assert lower.status_code == upper.status_code == 201
    assert lower.json()["id"] != upper.json()["id"]
    assert await api.balances(alice, bob) == [980, 20]


async def test_concurrent_requests_with_the_same_key_apply_once(fresh_api: LedgerApi) -> None:
    alice, bob = await fresh_api.open_account(1000), await fresh_api.open_account(0)

    responses = await asyncio.gather(
        *(fresh_api.transfer("racing", alice, bob, 600) for _ in range(8))
    )

    assert [response.status_code for response in responses] == [201] * 8
    assert len({response.json()["id"] for response in responses}) == 1
    assert await fresh_api.balances(alice, bob) == [400, 600]


async def test_concurrent_same_key_with_different_bodies_applies_only_one(
    fresh_api: LedgerApi,
) -> None:
    accounts = [await fresh_api.open_account(100) for _ in range(4)]

    responses = await asyncio.gather(
        fresh_api.transfer("contested", accounts[0], accounts[1], 10),
        fresh_api.transfer("contested", accounts[2], accounts[3], 20),
    )

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201, 422]
    assert (await fresh_api.total())["total"] == 400
    assert sorted(await fresh_api.balances(*accounts)) in ([90, 100, 100, 110], [80, 100, 100, 120])


async def test_unknown_transfer_returns_404(api: LedgerApi) -> None:
    response = await api.client.get("/transfers/777")

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_credit_up_to_exactly_the_maximum_is_applied(api: LedgerApi) -> None:
    alice, bob = await api.open_account(10), await api.open_account(MAX_CENTS - 10)

    response = await api.transfer("to-the-brim", alice, bob, 10)

    assert response.status_code == 201, response.text
    assert await api.balances(alice, bob) == [0, MAX_CENTS]


async def test_credit_past_the_maximum_returns_409_and_changes_nothing(api: LedgerApi) -> None:
    alice, bob = await api.open_account(MAX_CENTS), await api.open_account(MAX_CENTS)

    response = await api.transfer("overflow", alice, bob, 1)

    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert f"account {bob} would hold more than the maximum" in response.json()["detail"]
    assert await api.balances(alice, bob) == [MAX_CENTS, MAX_CENTS]
    assert (await api.total())["total"] == 2 * MAX_CENTS
    # Refused, the key was not consumed: once bob has room, the same request succeeds.
    assert (await api.transfer("make-room", bob, alice, MAX_CENTS)).status_code == 409
    assert (await api.transfer("make-room-2", bob, await api.open_account(0), 1)).status_code == 201
    assert (await api.transfer("overflow", alice, bob, 1)).status_code == 201
