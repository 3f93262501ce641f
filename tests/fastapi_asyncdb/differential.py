"""What a caller can observe of a run: the tools of the differential tests.

Two runs agree when ``observe`` describes them equally: the rows (each value with its
type, ``_fields``, ``_mapping`` by every key the test knows, ``_asdict()``, tuple,
hashing, pickling, equality with the other run's rows) or the exception (class,
message, the driver's exception class, whether the connection was invalidated), and
every warning either emitted.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Row

# Bounded and repeatable: the same examples on every run, no example database.
DIFFERENTIAL = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in ``n`` draws. Not ``integers(...) == 0``: Hypothesis favours
    the simplest values, which would make the rare case the common one."""
    return st.sampled_from([False] * (n - 1) + [True])


@dataclass
class Tally:
    """How many examples and calls a differential test ran, and how many the fast path
    served (calls that did not go through ``AsyncConnection.execute``)."""

    examples: int = 0
    calls: int = 0
    through_sqlalchemy: int = 0
    kinds: dict[str, int] = field(default_factory=dict)  # fast-path calls by kind of case

    @property
    def fast(self) -> int:
        return self.calls - self.through_sqlalchemy

    def __str__(self) -> str:
        return (
            f"{self.examples} examples, {self.calls} calls, {self.fast} on the fast path, "
            f"{self.through_sqlalchemy} through SQLAlchemy"
        )


def _attempt(function: Callable[[], Any]) -> Any:
    try:
        return ("value", function())
    except Exception as error:
        return ("raised", type(error), str(error))


def describe_error(error: BaseException) -> tuple[Any, ...]:
    return (
        "error",
        type(error),
        str(error),
        type(getattr(error, "orig", None)),
        getattr(error, "connection_invalidated", None),
    )


def describe_value(value: Any) -> tuple[Any, str]:
    return (type(value), repr(value))


def describe_row(row: Any, keys: Sequence[Any]) -> dict[str, Any]:
    """Everything a caller can do with a row, each attempt's result or exception."""
    fields = getattr(row, "_fields", ())

    def by_key(key: Any) -> Any:
        return describe_value(row._mapping[key])

    def contains(key: Any) -> bool:
        return key in row._mapping

    def attribute(name: str) -> Any:
        return describe_value(getattr(row, name))

    def by_index(index: int) -> Any:
        return describe_value(row[index])

    return {
        "type": type(row),
        "values": [describe_value(value) for value in row],
        "fields": fields,
        "len": len(row),
        "mapping keys": _attempt(lambda: list(row._mapping.keys())),
        "asdict": _attempt(lambda: repr(row._asdict())),
        "by key": [_attempt(partial(by_key, key)) for key in keys],
        "contains": [_attempt(partial(contains, key)) for key in keys],
        "attributes": [_attempt(partial(attribute, name)) for name in fields],
        "by index": [_attempt(partial(by_index, index)) for index in (0, -1, len(row))],
        "tuple": _attempt(lambda: repr(tuple(row))),
        "t": _attempt(lambda: repr(row.t)),
        "hash": _attempt(lambda: hash(row)),
        "equals its tuple": _attempt(lambda: row == tuple(row)),
        "pickled": _attempt(lambda: _describe_unpickled(pickle.loads(pickle.dumps(row)))),
    }


def _describe_unpickled(row: Any) -> tuple[Any, ...]:
    return (type(row), repr(tuple(row)), row._fields, list(row._mapping.keys()))


def describe_result(result: Any, keys: Sequence[Any]) -> Any:
    if isinstance(result, Row):
        return ("row", describe_row(result, keys))
    if isinstance(result, list):
        return ("rows", type(result), [describe_row(row, keys) for row in result])
    return ("scalar", describe_value(result))


async def observe(run: Callable[[], Awaitable[Any]], keys: Sequence[Any]) -> Any:
    """The run's outcome and every warning raised while producing and inspecting it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            outcome = describe_result(await run(), keys)
        except Exception as error:
            outcome = describe_error(error)
    return outcome, sorted(f"{w.category.__name__}: {w.message}" for w in caught)


def rows_equal(fast: Any, reference: Any) -> bool:
    """Row equality across the two runs, where both produced rows."""
    if isinstance(fast, Row) and isinstance(reference, Row):
        return bool(fast == reference) and hash_or_none(fast) == hash_or_none(reference)
    if isinstance(fast, list) and isinstance(reference, list):
        return len(fast) == len(reference) and all(
            rows_equal(a, b) for a, b in zip(fast, reference, strict=True)
        )
    return True


def hash_or_none(row: Row[Any]) -> int | None:
    try:
        return hash(row)
    except TypeError:
        return None


def first_difference(fast: Any, reference: Any, path: str = "outcome") -> str | None:
    """Where two descriptions first differ, said briefly; None when they are equal."""
    if fast == reference:
        return None
    if isinstance(fast, dict) and isinstance(reference, dict):
        for key in [*fast, *(key for key in reference if key not in fast)]:
            found = first_difference(fast.get(key), reference.get(key), f"{path}[{key!r}]")
            if found:
                return found
    if (
        isinstance(fast, list | tuple)
        and isinstance(reference, list | tuple)
        and len(fast) == len(reference)
    ):
        for index, (a, b) in enumerate(zip(fast, reference, strict=True)):
            found = first_difference(a, b, f"{path}[{index}]")
            if found:
                return found
    return f"{path}:\n  fast path:  {fast!r:.600}\n  SQLAlchemy: {reference!r:.600}"


def assert_same(fast: Any, reference: Any) -> None:
    difference = first_difference(fast, reference)
    if difference is not None:
        raise AssertionError(f"the fast path differs from execute at {difference}")
