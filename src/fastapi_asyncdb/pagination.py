"""Pages of a query: by key (keyset) for feeds and lists, by offset where numbers matter.

Keyset pagination asks for the rows after the last one seen, in key order: every page
costs the same, however deep, and rows inserted meanwhile neither shift nor repeat
items. Offset pagination (``LIMIT``/``OFFSET`` with a total) gives page numbers, at a
cost that grows with the offset and with pages that shift under concurrent writes.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Column, Select, Table, UniqueConstraint, func, inspect, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.sql import ColumnElement

from ._compat import order_by_clauses

__all__ = ["KeysetPage", "OffsetPage", "keyset_page", "offset_page"]

T = TypeVar("T")

Executor = AsyncSession | AsyncConnection


class KeysetPage(BaseModel, Generic[T]):
    """One page in key order, and the key to ask for the next one."""

    # Any item type, ORM classes included: ``-> KeysetPage[Account]`` beside a
    # ``response_model=KeysetPage[AccountOut]`` that shapes the answer.
    model_config = ConfigDict(arbitrary_types_allowed=True)

    items: list[T]
    next_after: Any | None = Field(
        description="Pass as ?after= for the next page; null on the last page."
    )


class OffsetPage(BaseModel, Generic[T]):
    """One page by position, with the number of rows in all pages."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

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

    ``key`` must be a selected table column that is provably unique and holds no NULL:
    the whole primary key of its table, or a column declared ``unique=True`` (or the one
    column of a unique constraint or index) and ``nullable=False``. Rows sharing a key
    would be skipped at page boundaries, and rows whose key is NULL never reached.
    The statement must have no ``order_by``: pages follow the key, and any other order
    would skip and repeat rows. A statement selecting one ORM entity gives entities,
    any other gives rows. One statement: one snapshot.

    Raises ``ValueError`` for a ``limit`` below 1, an ordered statement, or a key that
    is not a selected column (matched by identity, never by name), not provably unique,
    or may be NULL.
    """
    if limit < 1:
        raise ValueError(f"keyset_page needs a limit of at least 1, got {limit}")
    column = _unique_key_column(key)
    position, selected = _selected_key(statement, column)
    if order_by_clauses(statement):
        raise ValueError(
            "keyset_page orders the rows by its key; remove the order_by of the statement "
            "(to page in another order, page by a unique key of that order)"
        )
    # Order and filter by the selected column itself: the same table, or the same alias,
    # as the rows the cursor is read from.
    query = statement.order_by(selected).limit(limit + 1)
    if after is not None:
        query = query.where(selected > after)
    items = await _fetch(executor, query)
    more = len(items) > limit
    items = items[:limit]
    next_after = _key_of(items[-1], key, column, position) if more else None
    return KeysetPage(items=items, next_after=next_after)


async def offset_page(
    executor: Executor, statement: Select[*tuple[Any, ...]], *, offset: int, limit: int
) -> OffsetPage[Any]:
    """Rows ``offset`` to ``offset + limit`` of ``statement``, and how many there are.

    Give ``statement`` an ``order_by``: without one, the database may order each page
    differently. The count and the page are two statements; on a read session each is
    its own snapshot, so a write between them can make them disagree by its rows. A
    ``limit`` of 0 gives the total alone; a negative offset or limit raises
    ``ValueError``.
    """
    if offset < 0 or limit < 0:
        raise ValueError(
            f"offset_page needs an offset and a limit of at least 0, got {offset} and {limit}"
        )
    total = await executor.scalar(select(func.count()).select_from(statement.subquery()))
    items = await _fetch(executor, statement.offset(offset).limit(limit)) if limit else []
    return OffsetPage(items=items, total=int(total or 0), offset=offset, limit=limit)


def _unique_key_column(key: QueryableAttribute[Any] | ColumnElement[Any]) -> Column[Any]:
    """The table column of ``key``, if it provably holds one distinct, non-NULL value a row."""
    expression = key.expression if isinstance(key, QueryableAttribute) else key
    bases: set[Any] = getattr(expression, "base_columns", set())
    column = next(iter(bases)) if len(bases) == 1 else None
    if not isinstance(column, Column) or not isinstance(column.table, Table):
        raise ValueError(
            f"keyset_page needs a table column as its key, not {type(expression).__name__}: "
            "the uniqueness and NULLs of an expression cannot be checked"
        )
    if not _is_unique(column):
        # A key shared by rows skips those on either side of a page boundary.
        raise ValueError(
            f"the key of keyset_page, {column.table.name}.{column.name}, is not provably "
            "unique and rows sharing it would be skipped: page by a column that is the "
            "whole primary key of its table, declared unique=True, or the one column of a "
            "unique constraint or index (a tie-breaker column is not supported)"
        )
    if column.nullable and not column.primary_key:
        raise ValueError(
            f"the key of keyset_page, {column.name}, may be NULL, and rows whose key is "
            "NULL would never be reached: page by a column declared nullable=False"
        )
    return column


def _is_unique(column: Column[Any]) -> bool:
    table = column.table
    if list(table.primary_key.columns) == [column] or column.unique:
        return True
    constraints = [c for c in table.constraints if isinstance(c, UniqueConstraint)]
    if any(list(c.columns) == [column] for c in constraints):
        return True
    return any(index.unique and list(index.expressions) == [column] for index in table.indexes)


def _selected_key(
    statement: Select[*tuple[Any, ...]], column: Column[Any]
) -> tuple[int, ColumnElement[Any]]:
    """Where the key is among the selected columns, found by identity, never by name."""
    # The same column or its proxy (a label, an alias's column); iteration may give an
    # annotated copy of it, equal by structure (``compare``), not by identity.
    columns = statement.selected_columns
    selected = columns.corresponding_column(column)
    for position, candidate in enumerate(columns):
        if selected is not None and (candidate is selected or candidate.compare(selected)):
            return position, selected
    raise ValueError(
        "keyset_page reads the next cursor from each row: select the key "
        f"{column.table.name}.{column.name} itself (a column of the same name from "
        "another table or alias is not the key)"
    )


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


def _key_of(
    item: Any,
    key: QueryableAttribute[Any] | ColumnElement[Any],
    column: Column[Any],
    position: int,
) -> Any:
    if hasattr(item, "_mapping"):
        return item[position]
    if isinstance(key, QueryableAttribute):
        return getattr(item, key.key)
    # An entity, with the key given as a table column: the attribute mapped to it.
    return getattr(item, inspect(type(item)).get_property_by_column(column).key)
