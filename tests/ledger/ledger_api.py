"""A thin client for the ledger's HTTP API, so tests read as the behaviour they check."""

from __future__ import annotations

from typing import Any

import httpx


class LedgerApi:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def open_account(self, balance: int, owner: str = "alice") -> int:
        response = await self.client.post("/accounts", json={"owner": owner, "balance": balance})
        assert response.status_code == 201, response.text
        account_id: int = response.json()["id"]
        return account_id

    async def balance(self, account_id: int) -> int:
        response = await self.client.get(f"/accounts/{account_id}")
        assert response.status_code == 200, response.text
        balance: int = response.json()["balance"]
        return balance

    async def balances(self, *account_ids: int) -> list[int]:
        return [await self.balance(account_id) for account_id in account_ids]

    async def transfer(
        self, key: str, from_account: int, to_account: int, amount: int
    ) -> httpx.Response:
        body = {"from_account": from_account, "to_account": to_account, "amount": amount}
        return await self.client.post("/transfers", json=body, headers={"Idempotency-Key": key})

    async def total(self) -> dict[str, Any]:
        response = await self.client.get("/accounts/total")
        assert response.status_code == 200, response.text
        total: dict[str, Any] = response.json()
        return total
