"""The ledger with its transfer route swapped for a wrong one, to prove the checker can fail
(the broken-checker scenario).

Everything else is the real service (models, migrations, sessions, error mapping); only
``POST /transfers`` differs: it reads both balances, computes the new ones in Python and writes
them back with ``UPDATE ... SET balance = <value>`` without any lock, so concurrent transfers
overwrite each other (lost updates). Run: ``python -m chaos.broken_ledger`` with the ledger's env.
"""

from __future__ import annotations

import os
from typing import Annotated

import uvicorn
from fastapi import APIRouter, FastAPI, Header, HTTPException, status
from sqlalchemy import select, update

from fastapi_asyncdb import SessionDep
from ledger.app import create_app
from ledger.models import Account, Transfer
from ledger.schemas import TransferCreate, TransferOut

IdempotencyKey = Annotated[str, Header(alias="Idempotency-Key", min_length=1, max_length=200)]


async def read_modify_write_transfer(
    body: TransferCreate, idempotency_key: IdempotencyKey, session: SessionDep
) -> Transfer:
    request_hash = body.fingerprint()
    existing = await session.scalar(
        select(Transfer).where(Transfer.idempotency_key == idempotency_key)
    )
    if existing is not None:
        if existing.request_hash != request_hash:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "key reused")
        return existing
    source = await session.get(Account, body.from_account)
    target = await session.get(Account, body.to_account)
    if source is None or target is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "unknown account")
    if source.balance < body.amount:
        raise HTTPException(status.HTTP_409_CONFLICT, "insufficient funds")
    # The bug under test: values computed from a read that holds no lock, written back as
    # constants, so a concurrent transfer's update in between is silently overwritten.
    new_source_balance = source.balance - body.amount
    new_target_balance = target.balance + body.amount
    await session.execute(
        update(Account).where(Account.id == body.from_account).values(balance=new_source_balance)
    )
    await session.execute(
        update(Account).where(Account.id == body.to_account).values(balance=new_target_balance)
    )
    transfer = Transfer(
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        from_account=body.from_account,
        to_account=body.to_account,
        amount=body.amount,
    )
    session.add(transfer)
    await session.flush()
    return transfer


def create_broken_app() -> FastAPI:
    app = create_app()
    router = APIRouter()
    router.add_api_route(
        "/transfers",
        read_modify_write_transfer,
        methods=["POST"],
        status_code=status.HTTP_201_CREATED,
        response_model=TransferOut,
    )
    before = list(app.router.routes)
    app.include_router(router)
    # Starlette takes the first matching route: move ours (whatever wrapper FastAPI put
    # around the included router) in front of the ledger's.
    ours = [route for route in app.router.routes if route not in before]
    app.router.routes[:] = [*ours, *before]
    return app


def main() -> None:
    uvicorn.run(
        create_broken_app(),
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8000")),
        log_level="warning",
    )


if __name__ == "__main__":
    main()
