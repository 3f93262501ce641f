"""Transfers: move money between two accounts exactly once per idempotency key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, HTTPException, Path, status
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fastapi_asyncdb import DatabaseDep, ReadSessionDep, Retry

from .models import Account, Transfer
from .problems import problem_responses
from .routing import ledger_router
from .schemas import (
    IDEMPOTENCY_KEY_PATTERN,
    MAX_CENTS,
    IdempotencyKeyText,
    TransferCreate,
    TransferId,
    TransferOut,
)

__all__ = ["router"]

router = ledger_router("/transfers", "transfers")

TRANSFER_RETRY = Retry(attempts=4)

IdempotencyKey = Annotated[
    IdempotencyKeyText,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        json_schema_extra={"pattern": IDEMPOTENCY_KEY_PATTERN},
        description="Printable ASCII chosen by the client, unique per intended transfer;"
        " a retry with the same key and body returns the original transfer.",
    ),
]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TransferOut,
    responses=problem_responses(404, 409, 422),
)
async def create_transfer(
    body: TransferCreate, idempotency_key: IdempotencyKey, db: DatabaseDep
) -> Transfer:
    async def apply(session: AsyncSession) -> Transfer:
        return await _apply_transfer(session, body, idempotency_key)

    # A deadlock victim or serialization failure is repeated from the start; the
    # idempotency key makes a repeat that finds its own earlier commit a replay.
    return await db.run_transaction(apply, retry=TRANSFER_RETRY)


async def _apply_transfer(
    session: AsyncSession, body: TransferCreate, idempotency_key: str
) -> Transfer:
    request_hash = body.fingerprint()
    existing = await _find_by_key(session, idempotency_key)
    if existing is not None:
        return _replay(existing, request_hash)

    # Ascending id order: two transfers over the same pair lock in the same order,
    # so they queue instead of deadlocking.
    accounts: dict[int, Account] = {}
    for account_id in sorted((body.from_account, body.to_account)):
        query = select(Account).where(Account.id == account_id).with_for_update()
        account = await session.scalar(query)
        if account is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"account {account_id} does not exist")
        accounts[account_id] = account

    # Claim the key before judging the balance: a request that waited on the row locks
    # behind its own duplicate must replay the original, not report the balance the
    # original left behind.
    transfer = Transfer(
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        from_account=body.from_account,
        to_account=body.to_account,
        amount=body.amount,
    )
    session.add(transfer)
    try:
        await session.flush()
    except IntegrityError:
        # The rows are locked and exist, so only the key can clash: a concurrent request
        # with the same key committed first.
        await session.rollback()
        winner = await _find_by_key(session, idempotency_key)
        if winner is None:
            raise
        return _replay(winner, request_hash)

    # Raising rolls the request's transaction back, the claimed key with it. Both refusals
    # are 409, not 422: the request is valid, the accounts' current state is what forbids
    # it, and the same request (same key) succeeds once that state has changed.
    if accounts[body.from_account].balance < body.amount:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"account {body.from_account} has insufficient funds"
        )
    if accounts[body.to_account].balance > MAX_CENTS - body.amount:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"account {body.to_account} would hold more than the maximum balance of"
            f" {MAX_CENTS} cents",
        )
    # Relative updates in SQL: correct even if the row changed since it was read.
    await session.execute(
        update(Account)
        .where(Account.id == body.from_account)
        .values(balance=Account.balance - body.amount)
    )
    await session.execute(
        update(Account)
        .where(Account.id == body.to_account)
        .values(balance=Account.balance + body.amount)
    )
    return transfer


@router.get(
    "/{transfer_id}",
    status_code=status.HTTP_200_OK,
    response_model=TransferOut,
    responses=problem_responses(404),
)
async def get_transfer(
    transfer_id: Annotated[TransferId, Path()], session: ReadSessionDep
) -> Transfer:
    transfer = await session.get(Transfer, transfer_id)
    if transfer is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"transfer {transfer_id} does not exist")
    return transfer


async def _find_by_key(session: AsyncSession, key: str) -> Transfer | None:
    return await session.scalar(select(Transfer).where(Transfer.idempotency_key == key))


def _replay(transfer: Transfer, request_hash: str) -> Transfer:
    if transfer.request_hash != request_hash:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "this Idempotency-Key was already used with a different request body",
        )
    return transfer
