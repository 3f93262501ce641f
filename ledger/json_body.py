"""Request bodies read as standard JSON, numbers exactly (ledger.routing uses it).

JSON has one kind of number: ``246``, ``246.0`` and ``2.46e2`` are the same integer, and
the OpenAPI's ``"type": "integer"`` accepts all three. Python's ``json`` reads the last
two as floats, which a strict model refuses, and a float cannot say whether the client
wrote a whole number: ``9007199254740990.5`` reads as the float ``9007199254740990.0``.
So each number is read from its literal: integral ones become ``int`` exactly, the rest
stay floats (and the models refuse them).

What standard JSON does not allow is refused as a JSON error (422), never passed on:
``NaN`` and ``Infinity``, numbers too large for any field (``1e999999999`` would
otherwise be a billion-digit integer; a zero is zero whatever its exponent), strings
holding a lone UTF-16 surrogate, which no database and no JSON encoder accepts, and an
object that gives a key twice (RFC 8259 leaves it to the reader; Python keeps the last,
so ``{"balance": 1, "balance": 999}`` would read as 999 unseen).
"""

from __future__ import annotations

import json
import math
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["loads"]

# Far beyond any field's range, and far below what would be costly to make an int of.
_MAX_MAGNITUDE_DIGITS = 400


class _NotStandardJsonError(ValueError):
    pass


def _number(literal: str) -> int | float:
    mantissa = literal.lower().partition("e")[0]
    if not mantissa.strip("-.0"):
        return 0  # 0e999999999 is zero, however large the exponent
    try:
        exact = Decimal(literal)
    except InvalidOperation:  # an exponent past Decimal's own limits (about 10**18)
        raise _NotStandardJsonError(f"the number {literal[:40]} is out of range") from None
    if exact.adjusted() >= _MAX_MAGNITUDE_DIGITS:
        raise _NotStandardJsonError(f"the number {literal[:40]} is out of range")
    if exact == exact.to_integral_value():
        return int(exact)
    approximate = float(literal)
    if not math.isfinite(approximate):
        raise _NotStandardJsonError(f"the number {literal[:40]} is out of range")
    return approximate


def _integer(literal: str) -> int:
    if len(literal.lstrip("-")) > _MAX_MAGNITUDE_DIGITS:
        raise _NotStandardJsonError(f"the number {literal[:40]}... is out of range")
    return int(literal)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        # The key is the client's own text: not repeated in the answer.
        raise _NotStandardJsonError("an object gives the same key more than once")
    return document


def _constant(name: str) -> Any:
    raise _NotStandardJsonError(f"{name} is not a JSON value")


def _refuse_lone_surrogates(document: Any) -> None:
    pending = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as error:
                raise _NotStandardJsonError("a string holds a lone UTF-16 surrogate") from error


def loads(body: bytes) -> Any:
    """``body`` as JSON, as described above; json.JSONDecodeError for anything refused."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise json.JSONDecodeError("the body is not UTF-8", "", error.start) from error
    try:
        document = json.loads(
            text,
            parse_float=_number,
            parse_int=_integer,
            parse_constant=_constant,
            object_pairs_hook=_object,
        )
        _refuse_lone_surrogates(document)
    except _NotStandardJsonError as error:
        raise json.JSONDecodeError(str(error), text, 0) from error
    return document
