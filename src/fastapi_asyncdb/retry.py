"""Repeat a whole unit of work that lost a race, when its author says that is safe.

SQLAlchemy never retries inside a transaction, and it must not: only the whole
unit, from its first statement, can be run again, and only if running it twice
cannot apply it twice (idempotency keys, or a pure function of what it reads).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["Retry", "run_with_retries"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Retry:
    """How often and how patiently to repeat a unit of work that lost a race.

    ``attempts`` counts the first run. Delays grow exponentially from ``base_delay``
    up to ``max_delay`` with full jitter, so that the contenders of a deadlock do
    not meet again at the same instant.
    """

    attempts: int = 3
    base_delay: float = 0.005
    max_delay: float = 0.2

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("Retry.attempts counts the first run and must be at least 1")
        if self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ValueError("Retry delays must satisfy 0 <= base_delay <= max_delay")

    def delay(self, failures: int) -> float:
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**failures))


async def run_with_retries(
    open_unit: Callable[[], AbstractAsyncContextManager[AsyncSession]],
    work: Callable[[AsyncSession], Awaitable[T]],
    retry: Retry,
    is_retryable: Callable[[BaseException], bool],
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    failures = 0
    while True:
        try:
            async with open_unit() as session:
                return await work(session)
        except Exception as error:
            failures += 1
            if failures >= retry.attempts or not is_retryable(error):
                raise
            logger.info("unit of work lost a race (attempt %d); repeating it", failures)
            if on_retry is not None:
                on_retry(error)
            await asyncio.sleep(retry.delay(failures))
