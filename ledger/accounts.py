"""Accounts: open one, read one, page through them, and the total of all balances."""

from __future__ import annotations

from typing import Annotated

from fastapi import HTTPException, Path, Query, status
from sqlalchemy import Integer, func, literal, select

from fastapi_asyncdb import ReadSessionDep, SessionDep, keyset_page

from .models import Account
from .problems import problem_responses
from .routing import ledger_router
from .schemas import MAX_ID, AccountCreate, AccountId, AccountOut, AccountPage, Total

__all__ = ["router"]

router = ledger_router("/accounts", "accounts")

# Each balance is summed as its high and low 32-bit halves: SQLite's SUM is a 64-bit
# integer that fails past 2**63, about a thousand balances near MAX_CENTS. Both partial sums
# stay below 2**63 for as many accounts as there are ids, and Python adds them exactly.
_LOW_BITS = 32
_LOW_MASK = 2**_LOW_BITS - 1
# PostgreSQL has `bigint >> integer` only; a plain 32 would be bound as a bigint.
_SHIFT = literal(_LOW_BITS, Integer)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=AccountOut)
async def create_account(body: AccountCreate, session: SessionDep) -> Account:
    account = Account(owner=body.owner, balance=body.balance)
    session.add(account)
    # Flush for the generated id; the commit happens before the response is sent.
    await session.flush()
    return account


@router.get("", status_code=status.HTTP_200_OK, response_model=AccountPage)
async def list_accounts(
    session: ReadSessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> AccountPage:
    # Keyset, not OFFSET: every page costs the same, and rows inserted meanwhile
    # neither shift nor repeat items.
    page = await keyset_page(session, select(Account), key=Account.id, after=after, limit=limit)
    return AccountPage(
        items=[AccountOut.model_validate(account) for account in page.items],
        next_after=page.next_after,
    )


@router.get("/total", status_code=status.HTTP_200_OK, response_model=Total)
async def total_balance(session: ReadSessionDep) -> Total:
    # One statement is one snapshot: two separate reads could straddle a transfer.
    query = select(
        func.count(Account.id),
        func.coalesce(func.sum(Account.balance.bitwise_rshift(_SHIFT)), 0),
        func.coalesce(func.sum(Account.balance.bitwise_and(_LOW_MASK)), 0),
    )
    count, high, low = (await session.execute(query)).one()
    # SUM comes back as a Decimal on PostgreSQL and MariaDB; int() of it is exact.
    return Total(accounts=int(count), total=(int(high) << _LOW_BITS) + int(low))


@router.get(
    "/{account_id}",
    status_code=status.HTTP_200_OK,
    response_model=AccountOut,
    responses=problem_responses(404),
)
async def get_account(account_id: Annotated[AccountId, Path()], session: ReadSessionDep) -> Account:
    account = await session.get(Account, account_id)
    if account is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"account {account_id} does not exist")
    return account
