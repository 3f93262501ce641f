"""Prepared against ``connection.execute``: generated statements, types, options, calls.

Each example builds a statement from generated parts (columns of every type, labels
that collide, a join whose columns share names, literal and textual columns, bind
parameters with and without values, expanding ``IN``, ``.params()``, statement-level
execution options), runs it several times through a new ``Prepared`` on a connection
with generated connection- or engine-level execution options, and after each call
runs the same statement with the same parameters through SQLAlchemy's own
``connection.execute``. Everything observable must agree (see ``differential``). On
PostgreSQL a second schema holds other data under the same table names, so a
``schema_translate_map`` that is not honoured reads the wrong rows.
"""

from __future__ import annotations

import asyncio
import enum
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    DateTime,
    Enum,
    Float,
    Integer,
    Interval,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    TypeDecorator,
    Uuid,
    bindparam,
    cast,
    func,
    insert,
    literal_column,
    select,
    text,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from fastapi_asyncdb import Database, Prepared

from .differential import DIFFERENTIAL, Tally, assert_same, observe, one_in, rows_equal
from .prepared_runs import execute_uncounted, sqlalchemy_runs

pytestmark = pytest.mark.usefixtures("clean_environment")

OTHER_SCHEMA = "diff_other"


class Shade(enum.Enum):
    light = "light"
    dark = "dark"


class Shouting(TypeDecorator[str]):
    """Converts on the way out: only SQLAlchemy knows to apply it."""

    impl = String(30)
    cache_ok = True

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else value.upper()


metadata = MetaData()
value = Table(
    "diff_value",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(30)),
    Column("amount", Numeric(10, 2)),
    Column("loose", Numeric(10, 2, asdecimal=False)),
    Column("ratio", Float),
    Column("flag", Boolean),
    Column("day", Date),
    Column("stamp", DateTime(timezone=True)),
    Column("span", Interval),
    Column("blob", LargeBinary),
    Column("uid", Uuid),
    Column("shade", Enum(Shade)),
    Column("doc", JSON),
    Column("docb", JSON().with_variant(JSONB(), "postgresql")),
    Column("tags", JSON().with_variant(ARRAY(Integer), "postgresql")),
)
peer = Table(
    "diff_peer",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(30)),
    Column("value_id", Integer),
)


def value_rows(tag: str, offset: int, aware: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n in range(1, 7):
        if n == 4:  # every column NULL but the key
            rows.append({column.key: None for column in value.columns} | {"id": n})
            continue
        stamp = datetime(2024, 1, n, 12, 30, tzinfo=UTC if aware else None)
        rows.append(
            {
                "id": n,
                "name": f"{tag}-{n}",
                "amount": Decimal(f"{n + offset}.25"),
                "loose": Decimal(f"{n}.50"),
                "ratio": n / 4 + offset,
                "flag": n % 2 == 0,
                "day": date(2024, 2, n),
                "stamp": stamp + timedelta(days=offset),
                "span": timedelta(hours=n, minutes=offset),
                "blob": bytes([n, offset, 255]),
                "uid": uuid.UUID(int=n + offset),
                "shade": Shade.dark if n % 2 else Shade.light,
                "doc": {"n": n, "tag": tag},
                "docb": {"n": n, "list": [tag]},
                "tags": [n, n + offset],
            }
        )
    return rows


def peer_rows(tag: str) -> list[dict[str, Any]]:
    links = [1, 1, 2, 3, None]
    return [
        {"id": n, "name": f"{tag}-peer-{n}", "value_id": link}
        for n, link in enumerate(links, start=1)
    ]


@asynccontextmanager
async def started(database_url: str) -> AsyncIterator[Database]:
    async with Database(url=database_url, hide_parameters=False) as database:
        is_postgresql = database.backend.name == "postgresql"
        async with database.engine.begin() as connection:
            schemas: list[tuple[str | None, str, int]] = [(None, "default", 0)]
            if is_postgresql:
                await connection.execute(text(f"DROP SCHEMA IF EXISTS {OTHER_SCHEMA} CASCADE"))
                await connection.execute(text(f"CREATE SCHEMA {OTHER_SCHEMA}"))
                schemas.append((OTHER_SCHEMA, "other", 100))
            for schema, tag, offset in schemas:
                translated = await connection.execution_options(schema_translate_map={None: schema})
                await translated.run_sync(metadata.drop_all)
                await translated.run_sync(metadata.create_all)
                await translated.execute(insert(value), value_rows(tag, offset, is_postgresql))
                await translated.execute(insert(peer), peer_rows(tag))
                await connection.execution_options(schema_translate_map=None)
        yield database


# ---------------------------------------------------------------------------------
# Generated statements


@dataclass(frozen=True)
class Piece:
    """A part of a statement and the parameters it takes (key: strategy of values)."""

    element: Any
    parameters: tuple[tuple[str, st.SearchStrategy[Any]], ...] = ()


def maybe_wrong(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly good values, sometimes NULL or a value of the wrong type."""
    return st.one_of(good, good, good, st.none(), st.just("not-a-value"))


IDS = maybe_wrong(st.integers(0, 7))
COLUMNS: list[Piece] = [
    *(Piece(column) for column in value.columns),
    *(Piece(column) for column in peer.columns),
    Piece(literal_column("'literal'")),
    Piece(literal_column("diff_value.name")),
    Piece(func.coalesce(value.c.name, "none")),
    Piece(cast(value.c.amount, String)),
    Piece(type_coerce(value.c.name, Shouting)),
    Piece(value.c.id + bindparam("offset", 10), (("offset", st.integers(-5, 5)),)),
    Piece(value.c.id / bindparam("divisor", type_=Integer), (("divisor", st.integers(0, 2)),)),
]
# Columns of types that convert nothing, which the fast path serves, drawn as often as
# all the others together (as are the first, plainest conditions) so that many
# statements meet the fast path.
PLAIN_COLUMNS = [
    Piece(column)
    for column in (value.c.id, value.c.name, value.c.amount, value.c.stamp, value.c.uid, peer.c.id)
]
LABELS = st.one_of(st.none(), st.sampled_from(["id", "name", "x", "value_id"]))
WHERES: list[Piece] = [
    Piece(None),
    Piece(value.c.id == bindparam("id"), (("id", IDS),)),
    Piece(value.c.id <= bindparam("max_id", 3), (("max_id", IDS),)),
    Piece(
        value.c.id.in_(bindparam("ids", expanding=True)),
        (("ids", st.lists(st.integers(0, 7), max_size=3)),),
    ),
    Piece(value.c.id == 2),
    Piece(value.c.id <= bindparam("cap", 4, literal_execute=True), (("cap", IDS),)),
    Piece(value.c.name == bindparam("name"), (("name", maybe_wrong(st.just("default-2"))),)),
    Piece(value.c.uid == bindparam("uid"), (("uid", maybe_wrong(st.just(uuid.UUID(int=3)))),)),
    Piece(value.c.shade == bindparam("shade"), (("shade", st.sampled_from(Shade)),)),
    Piece(value.c.flag == bindparam("flag"), (("flag", maybe_wrong(st.booleans())),)),
    Piece(
        value.c.amount > bindparam("amount"),
        (("amount", maybe_wrong(st.decimals(0, 9, places=2))),),
    ),
    Piece(
        value.c.day >= bindparam("day"),
        (("day", maybe_wrong(st.dates(date(2024, 2, 1), date(2024, 2, 9)))),),
    ),
]


@dataclass
class ReadCase:
    statement: Any
    keys: list[Any]
    method: str
    calls: list[tuple[Any, bool]]  # (parameters, on a new connection)
    via: str
    connection_options: dict[str, Any]
    engine_options: dict[str, Any] | None
    reference_first: bool
    end_transactions: bool

    def __repr__(self) -> str:
        options = self.statement.get_execution_options()
        return (
            f"ReadCase({self.method}, {str(self.statement)!r}, statement options {options}, "
            f"calls {self.calls}, via {self.via}, connection options "
            f"{self.connection_options}, engine options {self.engine_options}, "
            f"reference first {self.reference_first}, end transactions {self.end_transactions})"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # how Hypothesis shows a failing case


def statement_options(postgresql: bool) -> st.SearchStrategy[dict[str, Any]]:
    options: list[dict[str, Any]] = [
        {"render_nulls": True},
        {"logging_token": "statement"},
        {"yield_per": 2},
        {"stream_results": True},
        {"driver_column_names": True},
    ]
    if postgresql:
        options += [{"schema_translate_map": {None: OTHER_SCHEMA}}] * 2
    return st.sampled_from(options)


@st.composite
def read_cases(draw: st.DrawFn, postgresql: bool) -> ReadCase:
    columns = st.sampled_from(COLUMNS) | st.sampled_from(PLAIN_COLUMNS)
    chosen = draw(st.lists(st.tuples(columns, LABELS), min_size=1, max_size=4))
    where = draw(st.sampled_from(WHERES) | st.sampled_from(WHERES[:3]))
    elements = [
        piece.element if label is None else piece.element.label(label) for piece, label in chosen
    ]
    pieces = [piece for piece, _ in chosen] + [where]
    statement: Any = (
        select(*elements)
        .select_from(value.outerjoin(peer, peer.c.value_id == value.c.id))
        .order_by(value.c.id, peer.c.id)
    )
    if where.element is not None:
        statement = statement.where(where.element)
    if draw(st.booleans()):
        statement = statement.limit(draw(st.integers(0, 3)))
    if draw(one_in(10)):
        statement = statement.params(max_id=2, offset=1)
    if draw(one_in(10)):  # a textual statement with typed columns
        statement = text(
            "SELECT diff_value.id, diff_value.name FROM diff_value "
            "WHERE diff_value.id <= :max_id ORDER BY diff_value.id"
        ).columns(value.c.id, value.c.name)
        pieces = [Piece(None, (("max_id", IDS),))]
    # Most cases are plain, as a hot endpoint's are (no option anywhere): those the
    # fast path serves from the second call on. The others check that it steps aside.
    plain = not draw(one_in(3))
    options = {} if plain else draw(statement_options(postgresql))
    if options:
        statement = statement.execution_options(**options)
    strategies = dict(parameter for piece in pieces for parameter in piece.parameters)

    @st.composite
    def parameters(draw_parameters: st.DrawFn) -> Any:
        drawn = {key: draw_parameters(strategy) for key, strategy in strategies.items()}
        missing = draw_parameters(one_in(8))
        if drawn and missing:
            drawn.pop(sorted(drawn)[0])
        if draw_parameters(one_in(10)):
            return [drawn]  # a list of one set, which execute also takes
        return drawn

    translate = {"schema_translate_map": {None: OTHER_SCHEMA}}
    # isolation_level is the one option the fast path allows (it checks the DBAPI
    # connection's own state instead).
    connection_options: list[dict[str, Any]] = [{}, {"isolation_level": "AUTOCOMMIT"}]
    engine_options: list[dict[str, Any] | None] = [None]
    vias = ["read_connection", "read_connection", "engine", "short labels"]
    if not plain:
        vias.append("uncached")  # no compiled cache: SQLAlchemy compiles every run
        connection_options += [{"logging_token": "connection"}, {"compiled_cache": None}]
        engine_options.append({"logging_token": "engine"})
        vias.append("primary")  # not autocommit: always SQLAlchemy's
        if postgresql:
            connection_options.append(translate)
            engine_options.append(translate)
    selected = list(statement.selected_columns)
    return ReadCase(
        statement=statement,
        keys=[
            *selected,
            *(getattr(column, "key", None) for column in selected),
            *value.columns,
            *peer.columns,
            "id",
            "name",
            "x",
            "nope",
        ],
        method=draw(st.sampled_from(["all", "one", "one_or_none", "scalar"])),
        calls=draw(st.lists(st.tuples(parameters(), st.booleans()), min_size=2, max_size=4)),
        via=draw(st.sampled_from(vias)),
        connection_options=draw(st.sampled_from(connection_options)),
        engine_options=draw(st.sampled_from(engine_options)),
        reference_first=draw(st.booleans()),
        end_transactions=draw(st.booleans()),
    )


# ---------------------------------------------------------------------------------
# Running a case


@dataclass
class Engines:
    """The library's database, and engines of other configurations on the same server."""

    database: Database
    others: dict[str, AsyncEngine]


def other_engines(database_url: str) -> dict[str, AsyncEngine]:
    autocommit = {"isolation_level": "AUTOCOMMIT", "hide_parameters": False}
    return {
        "short labels": create_async_engine(database_url, label_length=12, **autocommit),
        "uncached": create_async_engine(database_url, query_cache_size=0, **autocommit),
    }


@asynccontextmanager
async def connection_for(engines: Engines, case: ReadCase) -> AsyncIterator[AsyncConnection]:
    database = engines.database
    if case.via in engines.others:
        engine = engines.others[case.via]
    elif case.via == "primary":
        engine = database.engine
    elif case.via == "engine" or case.engine_options is not None:
        engine = database.read_engine
    else:
        async with database.read_connection() as connection:
            await _set_options(connection, case)
            yield connection
        return
    if case.engine_options is not None:
        engine = engine.execution_options(**case.engine_options)
    async with engine.connect() as connection:
        await _set_options(connection, case)
        yield connection


async def _set_options(connection: AsyncConnection, case: ReadCase) -> None:
    if case.connection_options:
        await connection.execution_options(**case.connection_options)


async def reference(
    connection: AsyncConnection, statement: Any, method: str, parameters: Any
) -> Any:
    result = await execute_uncounted(connection, statement, parameters)
    return getattr(result, method)()


async def compare_reads(engines: Engines, case: ReadCase, tally: Tally) -> None:
    prepared: Prepared[Any] = Prepared(case.statement)
    method: Callable[..., Any] = getattr(prepared, case.method)
    segments: list[list[Any]] = []
    for parameters, new_connection in case.calls:
        if new_connection or not segments:
            segments.append([])
        segments[-1].append(parameters)
    tally.examples += 1
    with sqlalchemy_runs() as runs:
        for segment in segments:
            async with connection_for(engines, case) as connection:
                for parameters in segment:
                    await compare_one(connection, case, method, parameters)
                    tally.calls += 1
    tally.through_sqlalchemy += runs.of(case.statement)
    fast = len(case.calls) - runs.of(case.statement)
    tally.kinds[case.via] = tally.kinds.get(case.via, 0) + fast


async def compare_one(
    connection: AsyncConnection,
    case: ReadCase,
    method: Callable[..., Any],
    parameters: Any,
) -> None:
    results: dict[str, Any] = {}

    async def fast() -> Any:
        results["fast"] = await method(connection, parameters)
        return results["fast"]

    async def sqlalchemy() -> Any:
        results["reference"] = await reference(connection, case.statement, case.method, parameters)
        return results["reference"]

    async def side(run: Callable[[], Any]) -> Any:
        if case.end_transactions:
            await connection.rollback()  # each side starts from no transaction
        outcome = await observe(run, case.keys)
        # The connection is left as execute leaves it.
        return outcome, connection.in_transaction(), connection.invalidated

    if case.reference_first:
        expected = await side(sqlalchemy)
        observed = await side(fast)
    else:
        observed = await side(fast)
        expected = await side(sqlalchemy)
    assert_same(observed, expected)
    assert rows_equal(results.get("fast"), results.get("reference"))


def test_prepared_gives_what_execute_gives_for_generated_statements(
    database_url: str, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tally = Tally()
    postgresql = backend == "postgresql"
    with asyncio.Runner() as runner:
        database_context = started(database_url)
        engines = Engines(runner.run(database_context.__aenter__()), other_engines(database_url))
        try:

            @settings(DIFFERENTIAL, max_examples=150 if postgresql else 50)
            @given(case=read_cases(postgresql))
            def check(case: ReadCase) -> None:
                runner.run(compare_reads(engines, case, tally))

            check()
        finally:
            for engine in engines.others.values():
                runner.run(engine.dispose())
            runner.run(database_context.__aexit__(None, None, None))
    with capsys.disabled():
        print(f"\n[{backend}] Prepared vs execute: {tally}; fast by connection: {tally.kinds}")
    assert tally.examples >= 50
    if postgresql:
        # The fast path served a good share of the calls: the comparison is not vacuous.
        assert tally.fast >= tally.calls // 6
    else:
        assert tally.fast == 0
