"""Random sequences of openings, transfers and retries against the HTTP API, on every backend.

A model of the bank predicts every answer exactly; after each step the balances read
back, money is conserved, ``/accounts/total`` equals the sum of the balances read one by
one, and no balance is negative or past MAX_CENTS. An unpredicted status (a 5xx
included) fails the run.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ledger.schemas import MAX_CENTS
from tests.ledger import strategies
from tests.ledger.blocking_ledger import OnLoop, SendsRequests

# Bounded so the machine runs in a few seconds per backend; CI derandomizes it.
RUNS = 10
STEPS_PER_RUN = 20
PAGE = 100

_runs = itertools.count()


@dataclass(frozen=True)
class Sent:
    key: str
    body: dict[str, int]
    answer: dict[str, Any]


class Bank(RuleBasedStateMachine):
    accounts = Bundle("accounts")

    def __init__(self, ledger: SendsRequests) -> None:
        super().__init__()
        self.ledger = ledger
        # Runs share the test's database: each predicts only the accounts it opened, on
        # top of what earlier runs left, which no later run changes.
        self.run = next(_runs)
        self.keys = itertools.count()
        self.balances: dict[int, int] = {}
        self.opened_total = 0
        self.applied: list[Sent] = []
        start = self._total()
        self.accounts_before, self.total_before = start["accounts"], start["total"]
        self.known_ids = {item["id"] for item in self._all_accounts()}

    def _total(self) -> dict[str, int]:
        response = self.ledger.request("GET", "/accounts/total")
        assert response.status_code == 200, response.text
        total: dict[str, int] = response.json()
        return total

    def _all_accounts(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        after: int | None = 0
        while after is not None:
            response = self.ledger.request(
                "GET", "/accounts", params={"limit": PAGE, "after": after}
            )
            assert response.status_code == 200, response.text
            page = response.json()
            items.extend(page["items"])
            after = page["next_after"]
        return items

    def _transfer(self, key: str, body: dict[str, int]) -> httpx.Response:
        return self.ledger.request(
            "POST", "/transfers", json=body, headers={"Idempotency-Key": key}
        )

    def _new_key(self, data: st.DataObject) -> str:
        # The prefix makes keys unique across runs; what is drawn must not depend on it,
        # or Hypothesis could not replay a run to shrink it.
        prefix = f"{self.run:08d}-{next(self.keys):06d}."
        assert len(prefix) == strategies.KEY_PREFIX_LENGTH
        return prefix + data.draw(strategies.key_tails)

    @initialize(target=accounts, balance=strategies.balances, owner=strategies.owners)
    def open_first_account(self, balance: int, owner: str) -> int:
        return self._open(balance, owner)

    @initialize(target=accounts, balance=strategies.balances, owner=strategies.owners)
    def open_second_account(self, balance: int, owner: str) -> int:
        return self._open(balance, owner)

    @rule(target=accounts, balance=strategies.balances, owner=strategies.owners)
    def open_account(self, balance: int, owner: str) -> int:
        return self._open(balance, owner)

    def _open(self, balance: int, owner: str) -> int:
        response = self.ledger.request(
            "POST", "/accounts", json={"owner": owner, "balance": balance}
        )
        assert response.status_code == 201, response.text
        created = response.json()
        assert created == {"id": created["id"], "owner": owner, "balance": balance}
        assert created["id"] not in self.known_ids
        self.known_ids.add(created["id"])
        self.balances[created["id"]] = balance
        self.opened_total += balance
        account_id: int = created["id"]
        return account_id

    @rule(balance=strategies.out_of_range_cents)
    def open_account_with_a_balance_out_of_range(self, balance: int) -> None:
        response = self.ledger.request("POST", "/accounts", json={"owner": "x", "balance": balance})
        assert response.status_code == 422, response.text

    def _two_accounts(self, data: st.DataObject) -> tuple[int, int]:
        pair = st.lists(st.sampled_from(sorted(self.balances)), min_size=2, max_size=2, unique=True)
        payer, payee = data.draw(pair)
        return payer, payee

    @rule(data=st.data())
    def transfer(self, data: st.DataObject) -> None:
        payer, payee = self._two_accounts(data)
        headroom = MAX_CENTS - self.balances[payee]
        amount = data.draw(strategies.amounts_around(self.balances[payer], headroom))
        self._transfer_and_check(payer, payee, amount, data)

    @rule(data=st.data())
    def transfer_to_the_brim(self, data: st.DataObject) -> None:
        # The richest account pays, so that the credit's limit is what is tested.
        payee = data.draw(st.sampled_from(sorted(self.balances)))
        payer = max((i for i in self.balances if i != payee), key=self.balances.__getitem__)
        headroom = MAX_CENTS - self.balances[payee]
        brim = [amount for amount in (headroom, headroom + 1) if 1 <= amount <= MAX_CENTS]
        if not brim:
            return
        amount = data.draw(st.sampled_from(brim))
        self._transfer_and_check(payer, payee, amount, data)

    def _transfer_and_check(self, payer: int, payee: int, amount: int, data: st.DataObject) -> None:
        headroom = MAX_CENTS - self.balances[payee]
        body = {"from_account": payer, "to_account": payee, "amount": amount}
        key = self._new_key(data)

        response = self._transfer(key, body)

        # Both refusals are the accounts' state, not the request's shape.
        refused = amount > self.balances[payer] or amount > headroom
        assert response.status_code == (409 if refused else 201), (body, response.text)
        if refused:
            assert response.headers["content-type"] == "application/problem+json"
            reason = "insufficient funds" if amount > self.balances[payer] else "maximum balance"
            assert reason in response.json()["detail"]
            return
        assert response.json() == {"id": response.json()["id"], **body}
        self.balances[payer] -= amount
        self.balances[payee] += amount
        self.applied.append(Sent(key, body, response.json()))

    @rule(data=st.data(), amount=st.one_of(st.just(0), strategies.out_of_range_cents))
    def transfer_an_amount_out_of_range(self, data: st.DataObject, amount: int) -> None:
        payer, payee = self._two_accounts(data)
        body = {"from_account": payer, "to_account": payee, "amount": amount}

        response = self._transfer(self._new_key(data), body)

        assert response.status_code == 422, response.text

    @rule(account=accounts, data=st.data())
    def transfer_to_the_same_account(self, account: int, data: st.DataObject) -> None:
        body = {"from_account": account, "to_account": account, "amount": 1}

        response = self._transfer(self._new_key(data), body)

        assert response.status_code == 422, response.text

    @rule(known=accounts, data=st.data())
    def transfer_involving_an_unknown_account(self, known: int, data: st.DataObject) -> None:
        unknown = data.draw(strategies.unknown_ids)
        assert unknown not in self.known_ids
        source, target = data.draw(st.permutations([known, unknown]))
        amount = data.draw(st.integers(min_value=1, max_value=MAX_CENTS))
        body = {"from_account": source, "to_account": target, "amount": amount}

        response = self._transfer(self._new_key(data), body)

        assert response.status_code == 404, response.text

    @rule(known=accounts, data=st.data())
    def transfer_involving_an_id_out_of_range(self, known: int, data: st.DataObject) -> None:
        bad = data.draw(strategies.ids_out_of_range)
        source, target = data.draw(st.permutations([known, bad]))
        body = {"from_account": source, "to_account": target, "amount": 1}

        response = self._transfer(self._new_key(data), body)

        assert response.status_code == 422, response.text
        assert self.ledger.request("GET", f"/accounts/{bad}").status_code == 422

    @precondition(lambda self: self.applied)
    @rule(data=st.data())
    def retry_an_applied_transfer(self, data: st.DataObject) -> None:
        sent = data.draw(st.sampled_from(self.applied))

        response = self._transfer(sent.key, sent.body)

        # A replay: the original transfer again, and no money moves.
        assert response.status_code == 201, response.text
        assert response.json() == sent.answer

    @precondition(lambda self: self.applied)
    @rule(data=st.data())
    def reuse_a_key_with_another_body(self, data: st.DataObject) -> None:
        sent = data.draw(st.sampled_from(self.applied))
        body = {**sent.body, "amount": sent.body["amount"] % MAX_CENTS + 1}

        response = self._transfer(sent.key, body)

        assert response.status_code == 422, response.text

    @invariant()
    def money_is_conserved_and_the_total_is_the_sum_of_the_balances(self) -> None:
        total = self._total()
        listed = {item["id"]: item["balance"] for item in self._all_accounts()}
        assert total == {
            "accounts": self.accounts_before + len(self.balances),
            "total": self.total_before + self.opened_total,
        }
        assert sum(listed.values()) == total["total"]
        assert {i: listed[i] for i in self.balances} == self.balances
        assert sum(self.balances.values()) == self.opened_total
        assert all(0 <= balance <= MAX_CENTS for balance in listed.values())

    def teardown(self) -> None:
        # Once per run, each of its accounts read on its own as well.
        for account_id, balance in self.balances.items():
            response = self.ledger.request("GET", f"/accounts/{account_id}")
            assert response.status_code == 200, response.text
            assert response.json()["balance"] == balance


def test_random_operations_keep_every_bank_invariant(
    client: httpx.AsyncClient, session_loop: asyncio.AbstractEventLoop
) -> None:
    ledger = OnLoop(client, session_loop)

    class BankOnThisLedger(Bank):
        def __init__(self) -> None:
            super().__init__(ledger)

    run_state_machine_as_test(
        BankOnThisLedger,
        settings=settings(
            max_examples=RUNS,
            stateful_step_count=STEPS_PER_RUN,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
