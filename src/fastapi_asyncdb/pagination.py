"""Pages of a query: by key (keyset) for feeds and lists, by offset where numbers matter.

Keyset pagination asks for the rows after the last one seen, in key order: every page
costs the same, however deep, and rows inserted meanwhile neither shift nor repeat
items. Offset pagination (``LIMIT``/``OFFSET`` with a total) gives page numbers, at a
cost that grows with the offset and with pages that shift under concurrent writes.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.sql import ColumnElement

__all__ = ["KeysetPage", "OffsetPage", "keyset_page", "offset_page"]

T = TypeVar("T")

Executor = AsyncSession | AsyncConnection


class KeysetPage(BaseModel, Generic[T]):
    """One page in key order, and the key to ask for the next one."""

    items: list[T]
    next_after: Any | None = Field(
        description="Pass as ?after= for the next page; null on the last page."
    )


class OffsetPage(BaseModel, Generic[T]):
    """One page by position, with the number of rows in all pages."""

    items: list[T]
    total: int = Field(description="Rows in all pages, counted by the same query.")
    offset: int
    limit: int


async def keyset_page(
    executor: Executor,
    statement: Select[*tuple[Any, ...]],
    *,
    key: QueryableAttribute[Any] | ColumnElement[Any],
    after: Any | None,
    limit: int,
) -> KeysetPage[Any]:
    """The ``limit`` rows of ``statement`` whose ``key`` follows ``after``, in key order.

    ``key`` must be unique (a primary key, or a unique column). A statement selecting one
    ORM entity gives entities, any other gives rows. One statement: one snapshot.
    """
    query = statement.order_by(key).limit(limit + 1)
    if after is not None:
        query = query.where(key > after)
    items = await _fetch(executor, query)
    more = len(items) > limit
    items = items[:limit]
    next_after = _key_of(items[-1], key) if more else None
    return KeysetPage(items=items, next_after=next_after)


async def offset_page(
    executor: Executor, statement: Select[*tuple[Any, ...]], *, offset: int, limit: int
) -> OffsetPage[Any]:
    """Rows ``offset`` to ``offset + limit`` of ``statement``, and how many there are.

    Give ``statement`` an ``order_by``: without one, the database may order each page
    differently. The count and the page are two statements; on a read session each is
    its own snapshot, so a write between them can make them disagree by its rows.
    """
    total = await executor.scalar(select(func.count()).select_from(statement.subquery()))
    items = await _fetch(executor, statement.offset(offset).limit(limit))
    return OffsetPage(items=items, total=int(total or 0), offset=offset, limit=limit)


async def _fetch(executor: Executor, statement: Select[*tuple[Any, ...]]) -> list[Any]:
    result = await executor.execute(statement)
    if isinstance(executor, AsyncSession) and _selects_one_entity(statement):
        return list(result.scalars().all())
    return list(result.all())


def _selects_one_entity(statement: Select[*tuple[Any, ...]]) -> bool:
    descriptions = statement.column_descriptions
    return (
        len(descriptions) == 1
        and descriptions[0].get("entity") is not None
        and (descriptions[0].get("expr") is descriptions[0].get("entity"))
    )


def _key_of(item: Any, key: QueryableAttribute[Any] | ColumnElement[Any]) -> Any:
    if isinstance(key, QueryableAttribute) and not hasattr(item, "_mapping"):
        return getattr(item, key.key)
    mapping = item._mapping
    return mapping[key] if key in mapping else mapping[key.key]
