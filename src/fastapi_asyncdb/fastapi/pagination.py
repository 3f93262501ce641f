"""Query parameters for pages, bounded so that a bad one is a 422, not a database error.

A cursor past the key column's range (``?after=3000000000`` for an ``Integer`` key)
fails in the database (PostgreSQL: integer out of range) or in the driver (SQLite: too
large to convert), and a negative offset is refused by the server: each would be a 500.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

__all__ = ["BigIntegerAfter", "IntegerAfter", "PageLimit", "PageOffset"]

_INT32 = 2**31 - 1
_INT64 = 2**63 - 1

IntegerAfter = Annotated[
    int | None,
    Query(ge=-_INT32 - 1, le=_INT32, description="The last key of the previous page."),
]
"""``?after=`` for an ``Integer`` key (32 bits on every backend)."""

BigIntegerAfter = Annotated[
    int | None,
    Query(ge=-_INT64 - 1, le=_INT64, description="The last key of the previous page."),
]
"""``?after=`` for a ``BigInteger`` key."""

PageLimit = Annotated[int, Query(ge=1, le=100, description="Items on the page, at most 100.")]
"""``?limit=``: from 1 to 100. Give the default in the signature (``limit: PageLimit = 50``)."""

PageOffset = Annotated[int, Query(ge=0, le=_INT32, description="Items to skip.")]
"""``?offset=`` for ``offset_page``: from 0."""
