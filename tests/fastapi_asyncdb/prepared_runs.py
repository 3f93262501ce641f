"""Which runs of a statement went through SQLAlchemy's ``AsyncConnection.execute``.

The fast path and SQLAlchemy's adapter both run statements through asyncpg's
prepared statements, which nothing on the wire tells apart; what tells them apart is
whether ``execute`` was called. ``sqlalchemy_runs()`` wraps it (the real method still
runs) and counts its calls per statement object. A test's own reference runs go
through ``execute_uncounted`` instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

_original_execute = AsyncConnection.execute


class SqlalchemyRuns:
    def __init__(self) -> None:
        self._counts: Counter[int] = Counter()
        self._statements: dict[int, object] = {}  # keeps each counted id alive

    def record(self, statement: object) -> None:
        self._counts[id(statement)] += 1
        self._statements[id(statement)] = statement

    def of(self, statement: object) -> int:
        return self._counts[id(statement)]


@contextmanager
def sqlalchemy_runs() -> Iterator[SqlalchemyRuns]:
    runs = SqlalchemyRuns()

    async def execute(
        self: AsyncConnection, statement: Any, parameters: Any = None, **kwargs: Any
    ) -> Any:
        runs.record(statement)
        return await _original_execute(self, statement, parameters, **kwargs)

    AsyncConnection.execute = execute  # type: ignore[method-assign]
    try:
        yield runs
    finally:
        AsyncConnection.execute = _original_execute  # type: ignore[method-assign]


async def execute_uncounted(
    connection: AsyncConnection, statement: Any, parameters: Any = None
) -> Any:
    """SQLAlchemy's own execute, not counted: the reference a test compares with."""
    return await _original_execute(connection, statement, parameters)
