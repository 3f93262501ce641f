"""The request and response bodies."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from .text import IDEMPOTENCY_KEY_PATTERN, OWNER_PATTERN, check_idempotency_key, check_owner

__all__ = [
    "IDEMPOTENCY_KEY_PATTERN",
    "MAX_CENTS",
    "MAX_ID",
    "AccountCreate",
    "AccountId",
    "AccountOut",
    "AccountPage",
    "Amount",
    "Cents",
    "IdempotencyKeyText",
    "Owner",
    "Total",
    "TransferCreate",
    "TransferId",
    "TransferOut",
]

# Ids are INTEGER columns: a larger number would be a driver error (500) instead of a 422.
MAX_ID = 2**31 - 1
# Amounts beyond 2**53 lose precision in JavaScript clients, which read JSON numbers as
# doubles. Every balance stays at or below it too: the API refuses a credit past it and a
# CHECK constraint makes such a balance impossible to store.
MAX_CENTS = 2**53 - 1

AccountId = Annotated[int, Field(ge=1, le=MAX_ID)]
TransferId = Annotated[int, Field(ge=1, le=MAX_ID)]
Cents = Annotated[int, Field(ge=0, le=MAX_CENTS)]
Amount = Annotated[int, Field(gt=0, le=MAX_CENTS)]

# The pattern is what the OpenAPI promises; the validator enforces exactly it, with a
# message that names the rule broken instead of quoting the regular expression.
Owner = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        json_schema_extra={"pattern": OWNER_PATTERN},
        description="Any Unicode text without control characters or line separators,"
        " not blank, and not starting or ending with whitespace. Stored as sent.",
    ),
    AfterValidator(check_owner),
]
IdempotencyKeyText = Annotated[str, AfterValidator(check_idempotency_key)]


class _Request(BaseModel):
    # Strict: money is integer cents; 10.5 or "10" is a client bug, not something to coerce.
    # (246.0 is the integer 246 in JSON's own terms; ledger.json_body reads it as one.)
    model_config = ConfigDict(strict=True, extra="forbid")


class AccountCreate(_Request):
    owner: Owner
    balance: Cents


class AccountOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: AccountId
    owner: str
    balance: Cents


class AccountPage(BaseModel):
    items: list[AccountOut]
    next_after: AccountId | None = Field(
        description="Pass as ?after= for the next page; null at the end."
    )


class Total(BaseModel):
    accounts: Annotated[int, Field(ge=0)]
    total: Annotated[
        int,
        Field(
            ge=0,
            description="Exact, and unbounded: with many accounts it exceeds 2**53, so"
            " clients that read JSON numbers as doubles must parse it as a big integer.",
        ),
    ]


class TransferCreate(_Request):
    """Move ``amount`` cents from one account to another, which must differ."""

    from_account: AccountId
    to_account: AccountId
    amount: Amount

    @model_validator(mode="after")
    def _distinct_accounts(self) -> Self:
        if self.from_account == self.to_account:
            raise ValueError("from_account and to_account must differ")
        return self

    def fingerprint(self) -> str:
        """SHA-256 of the canonical body: equal requests hash equal whatever their key order."""
        canonical = json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class TransferOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: TransferId
    from_account: AccountId
    to_account: AccountId
    amount: Amount
