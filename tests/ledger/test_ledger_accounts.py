"""Accounts: create, read, validation, keyset pagination, the one-statement total."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import insert

from fastapi_asyncdb import Database
from ledger.models import Account
from ledger.schemas import MAX_CENTS
from tests.ledger.ledger_api import LedgerApi


async def test_created_account_is_returned_with_its_id_and_readable(api: LedgerApi) -> None:
    response = await api.client.post("/accounts", json={"owner": "alice", "balance": 1500})

    assert response.status_code == 201
    created = response.json()
    assert created == {"id": created["id"], "owner": "alice", "balance": 1500}
    fetched = await api.client.get(f"/accounts/{created['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == created


async def test_unknown_account_returns_404_problem(api: LedgerApi) -> None:
    response = await api.client.get("/accounts/424242")

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 404


async def test_account_id_beyond_the_integer_column_returns_422_not_500(api: LedgerApi) -> None:
    response = await api.client.get(f"/accounts/{2**31}")

    assert response.status_code == 422


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"owner": "bob", "balance": -1}, id="negative-balance"),
        pytest.param({"owner": "bob", "balance": 10.5}, id="float-balance"),
        pytest.param({"owner": "bob", "balance": "10"}, id="string-balance"),
        pytest.param({"owner": "", "balance": 1}, id="empty-owner"),
        pytest.param({"owner": "  ", "balance": 1}, id="blank-owner"),
        pytest.param({"owner": "a\u0000b", "balance": 1}, id="owner-with-nul"),
        pytest.param({"owner": " bob", "balance": 1}, id="owner-with-leading-space"),
        pytest.param({"owner": "bob", "balance": 2**53}, id="balance-past-the-maximum"),
        pytest.param({"owner": "bob", "balance": 2**63}, id="balance-past-64-bits"),
        pytest.param({"owner": "x" * 201, "balance": 1}, id="owner-too-long"),
        pytest.param({"owner": "bob"}, id="missing-balance"),
        pytest.param({"owner": "bob", "balance": 1, "admin": True}, id="unknown-field"),
    ],
)
async def test_invalid_account_is_rejected_with_422_and_not_stored(
    api: LedgerApi, body: dict[str, Any]
) -> None:
    response = await api.client.post("/accounts", json=body)

    assert response.status_code == 422
    assert await api.total() == {"accounts": 0, "total": 0}


async def test_owner_of_exactly_200_characters_is_accepted(api: LedgerApi) -> None:
    response = await api.client.post("/accounts", json={"owner": "x" * 200, "balance": 0})

    assert response.status_code == 201
    assert response.json()["owner"] == "x" * 200


async def test_pagination_walks_every_account_once_in_id_order(api: LedgerApi) -> None:
    ids = [await api.open_account(balance=n, owner=f"owner-{n}") for n in range(7)]

    seen: list[int] = []
    after: int | None = 0
    pages = 0
    while after is not None:
        response = await api.client.get("/accounts", params={"limit": 3, "after": after})
        assert response.status_code == 200
        page = response.json()
        assert len(page["items"]) <= 3
        seen.extend(item["id"] for item in page["items"])
        after = page["next_after"]
        pages += 1

    assert seen == ids
    assert pages == 3


async def test_pagination_of_an_exact_multiple_ends_without_an_empty_page(api: LedgerApi) -> None:
    ids = [await api.open_account(balance=1) for _ in range(4)]

    first = (await api.client.get("/accounts", params={"limit": 2})).json()
    second = await api.client.get("/accounts", params={"limit": 2, "after": first["next_after"]})

    assert [item["id"] for item in first["items"]] == ids[:2]
    assert first["next_after"] == ids[1]
    assert [item["id"] for item in second.json()["items"]] == ids[2:]
    assert second.json()["next_after"] is None


async def test_pagination_defaults_to_50_items(api: LedgerApi) -> None:
    for _ in range(51):
        await api.open_account(balance=0)

    page = (await api.client.get("/accounts")).json()

    assert len(page["items"]) == 50
    assert page["next_after"] == page["items"][-1]["id"]


@pytest.mark.parametrize("limit", [0, 101, -1])
async def test_pagination_limit_outside_1_to_100_returns_422(api: LedgerApi, limit: int) -> None:
    response = await api.client.get("/accounts", params={"limit": limit})

    assert response.status_code == 422


async def test_total_counts_accounts_and_sums_balances(api: LedgerApi) -> None:
    assert await api.total() == {"accounts": 0, "total": 0}

    await api.open_account(balance=100)
    await api.open_account(balance=250)

    assert await api.total() == {"accounts": 2, "total": 350}


async def test_total_stays_exact_where_an_integer_sum_passes_2_63(
    api: LedgerApi, db: Database
) -> None:
    # Just enough accounts at the maximum for SQLite's 64-bit SUM to overflow.
    count = 2**63 // MAX_CENTS + 1
    async with db.transaction() as session:
        await session.execute(
            insert(Account), [{"owner": f"rich-{n}", "balance": MAX_CENTS} for n in range(count)]
        )

    total = await api.total()

    assert total == {"accounts": count, "total": count * MAX_CENTS}
    assert total["total"] >= 2**63
    listed = 0
    after: int | None = 0
    while after is not None:
        page = (await api.client.get("/accounts", params={"limit": 100, "after": after})).json()
        listed += sum(item["balance"] for item in page["items"])
        after = page["next_after"]
    assert listed == total["total"]


@pytest.mark.parametrize("literal", ["246", "246.0", "2.46e2", "24600e-2", "246.000"])
async def test_an_integral_number_in_any_json_notation_is_that_integer(
    api: LedgerApi, literal: str
) -> None:
    body = f'{{"owner": "x", "balance": {literal}}}'

    response = await api.client.post(
        "/accounts", content=body, headers={"content-type": "application/json"}
    )

    assert response.status_code == 201, response.text
    assert response.json()["balance"] == 246


@pytest.mark.parametrize("name", ["limit", "after"])
async def test_a_page_parameter_given_twice_returns_422(api: LedgerApi, name: str) -> None:
    await api.open_account(balance=1)

    response = await api.client.get(f"/accounts?{name}=1&{name}=2")

    assert response.status_code == 422
    assert name in response.text
    assert "more than once" in response.text


async def test_an_undeclared_query_parameter_given_twice_is_ignored(api: LedgerApi) -> None:
    # /accounts/total declares no parameter, so OpenAPI documents no 422 for it.
    response = await api.client.get("/accounts/total?x=1&x=2")

    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("body", "status", "balance"),
    [
        pytest.param('{"owner": "x", "balance": 1, "balance": 999}', 422, None, id="repeated-key"),
        pytest.param(
            '{"owner": "x", "balance": 1e9999999999999999999999}', 422, None, id="huge-exponent"
        ),
        pytest.param('{"owner": "x", "balance": 0e999999999}', 201, 0, id="zero-huge-exponent"),
    ],
)
async def test_a_body_is_read_once_and_exactly_or_refused_with_a_422_problem(
    api: LedgerApi, body: str, status: int, balance: int | None
) -> None:
    response = await api.client.post(
        "/accounts", content=body, headers={"content-type": "application/json"}
    )

    assert response.status_code == status, response.text
    if balance is None:
        assert response.headers["content-type"] == "application/problem+json"
        assert (await api.total())["accounts"] == 0
    else:
        assert response.json()["balance"] == balance
