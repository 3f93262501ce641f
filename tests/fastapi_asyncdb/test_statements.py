"""Each statement gets exactly one span, and a slow one one log line, on the fast path
and on SQLAlchemy's, with SQLAlchemy's OpenTelemetry instrumentation on the engines."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, event, insert, select
from sqlalchemy.exc import DBAPIError, IntegrityError

from fastapi_asyncdb import Database, Prepared
from fastapi_asyncdb.prepared import run_statement
from fastapi_asyncdb.request_id import current_request_id

from .prepared_runs import sqlalchemy_runs
from .spans import instrumented, recording, statement_spans

pytestmark = [
    pytest.mark.usefixtures("clean_environment"),
    pytest.mark.backends("sqlite", "postgresql"),
]

metadata = MetaData()
note = Table(
    "statements_note",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("body", String(200), nullable=False),
    Column("weight", Integer, nullable=False),
)
NOTE_BY_ID = Prepared(select(note.c.id, note.c.body).where(note.c.id == bindparam("id")))
NOTES_BY_BODY = Prepared(select(note.c.id).where(note.c.body == bindparam("body")))
RATIO = Prepared(select(note.c.weight / bindparam("divisor", type_=Integer)).where(note.c.id == 1))
ADD_NOTE = insert(note)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with Database(url=database_url, slow_statement_threshold=1e-9) as database:
        async with database.engine.begin() as connection:
            await connection.run_sync(metadata.drop_all)
            await connection.run_sync(metadata.create_all)
            await connection.execute(insert(note), [{"id": 1, "body": "one", "weight": 6}])
        yield database


def _query(span: Any) -> str:
    """The statement a span names: in the conventions' new name or the old one."""
    attributes = span.attributes or {}
    return str(attributes.get("db.query.text") or attributes.get("db.statement"))


def _is_begin(span: Any) -> bool:
    return _query(span).startswith("BEGIN")


def _fast(database: Database) -> bool:
    return database.engine.dialect.driver == "asyncpg"


async def test_every_statement_has_exactly_one_span_on_either_path(database: Database) -> None:
    with instrumented(database), sqlalchemy_runs() as runs:
        async with database.read_connection() as connection:
            for _ in range(4):
                assert (await NOTE_BY_ID.one(connection, {"id": 1})).body == "one"
        for number in (2, 3, 4):  # each write its own transaction
            async with database.engine.connect() as connection:
                await run_statement(connection, ADD_NOTE, {"id": number, "body": "b", "weight": 1})
        async with database.read_session() as session:  # the ORM's path
            assert (await session.execute(select(note.c.id).order_by(note.c.id))).all()
        spans = statement_spans()
    # On asyncpg the first read and the first write go through SQLAlchemy and the
    # rest run on the driver: the fast path ran, tracing on.
    assert runs.of(NOTE_BY_ID.statement) == (1 if _fast(database) else 4)
    assert runs.of(ADD_NOTE) == (1 if _fast(database) else 3)
    queries = [_query(span) for span in spans]
    reads = [query for query in queries if "FROM statements_note" in query and "WHERE" in query]
    assert len(reads) == 4
    assert len([query for query in queries if query.startswith("INSERT")]) == 3
    # SQLite's backend begins its write transactions with a statement of its own.
    assert len([query for query in queries if not query.startswith("BEGIN")]) == 4 + 3 + 1
    scopes = {span.instrumentation_scope.name for span in spans if span.instrumentation_scope}
    library = "fastapi_asyncdb"
    assert (library in scopes) == _fast(database)


async def test_fast_path_spans_follow_the_database_conventions(database: Database) -> None:
    with instrumented(database):
        async with database.read_connection() as connection:
            for _ in range(2):
                await NOTE_BY_ID.one(connection, {"id": 1})
        spans = [
            s
            for s in statement_spans()
            if s.instrumentation_scope and s.instrumentation_scope.name == "fastapi_asyncdb"
        ]
    if not _fast(database):
        assert spans == []  # SQLite: the instrumentation's own span covers every statement
        return
    (span,) = spans
    url = database.engine.url
    assert span.name == f"SELECT {url.database}"
    assert span.kind.name == "CLIENT"
    assert span.attributes is not None
    assert dict(span.attributes) == {
        "db.system.name": "postgresql",
        "db.namespace": url.database,
        "server.address": url.host,
        **({} if url.port in (None, 5432) else {"server.port": url.port}),
        "db.query.text": NOTE_BY_ID.statement.compile(dialect=database.engine.dialect).string,
        "db.operation.name": "SELECT",
    }
    assert span.end_time is not None
    assert span.start_time is not None
    assert span.end_time > span.start_time
    assert span.status.is_ok


@pytest.mark.backends("postgresql")  # SQLite divides by zero into NULL
async def test_a_failing_statement_has_an_error_span_naming_its_class_only(
    database: Database,
) -> None:
    with instrumented(database):
        async with database.read_connection() as connection:
            assert await RATIO.scalar(connection, {"divisor": 2}) == 3  # learnt
            with pytest.raises(DBAPIError):
                await RATIO.scalar(connection, {"divisor": 0})
        failed = [span for span in statement_spans() if not span.status.is_ok]
    (span,) = failed
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "fastapi_asyncdb"
    assert span.status.description is None
    assert span.attributes is not None
    assert span.attributes["error.type"] == "asyncpg.exceptions.DivisionByZeroError"
    assert span.attributes["db.response.status_code"] == "22012"


async def test_another_listener_sends_statements_back_to_sqlalchemy(database: Database) -> None:
    seen: list[str] = []

    def listener(*args: Any) -> None:
        seen.append(args[2])

    engine = database.read_engine.sync_engine
    with instrumented(database), sqlalchemy_runs() as runs:
        event.listen(engine, "after_cursor_execute", listener)
        try:
            async with database.read_connection() as connection:
                for _ in range(3):
                    await NOTE_BY_ID.one(connection, {"id": 1})
        finally:
            event.remove(engine, "after_cursor_execute", listener)
        spans = statement_spans()
    assert runs.of(NOTE_BY_ID.statement) == 3
    assert len(seen) == 3
    assert len(spans) == 3
    assert {s.instrumentation_scope.name for s in spans if s.instrumentation_scope} == {
        "opentelemetry.instrumentation.sqlalchemy"
    }


async def test_without_the_instrumentation_nothing_is_traced_and_the_fast_path_runs(
    database: Database,
) -> None:
    with recording(), sqlalchemy_runs() as runs:
        async with database.read_connection() as connection:
            for _ in range(3):
                await NOTE_BY_ID.one(connection, {"id": 1})
        assert statement_spans() == []
    assert runs.of(NOTE_BY_ID.statement) == (1 if _fast(database) else 3)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    secret=st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]),
        min_size=6,
        max_size=40,
    )
)
async def test_no_parameter_value_reaches_a_span_or_a_log_line(
    database: Database, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = f"zq{secret}qz"  # never a piece of SQL
    caplog.clear()
    with instrumented(database), caplog.at_level(logging.DEBUG):
        async with database.read_connection() as connection:
            for _ in range(2):
                await NOTES_BY_BODY.all(connection, {"body": secret})
        for _ in range(2):  # a duplicate key, through SQLAlchemy each time
            async with database.engine.connect() as connection:
                with pytest.raises(IntegrityError):
                    await run_statement(
                        connection, ADD_NOTE, {"id": 1, "body": secret, "weight": 1}
                    )
        spans = [span for span in statement_spans() if not _is_begin(span)]
    assert len(spans) == 4
    assert len([span for span in spans if not span.status.is_ok]) == 2
    texts = [repr(record.__dict__) for record in caplog.records]
    for span in spans:
        texts.append(span.to_json())
    assert texts
    assert not [text for text in texts if secret in text or repr(secret)[1:-1] in text]


async def test_a_slow_statement_is_logged_once_with_its_role_and_request_id(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    token = current_request_id.set("req-42")
    try:
        with (
            caplog.at_level(logging.WARNING, logger="fastapi_asyncdb.statements"),
            sqlalchemy_runs() as runs,
        ):
            async with database.read_connection() as connection:
                for _ in range(3):
                    await NOTE_BY_ID.one(connection, {"id": 1})
    finally:
        current_request_id.reset(token)
    # The log's own listeners keep the fast path: SQLAlchemy ran the first read only.
    assert runs.of(NOTE_BY_ID.statement) == (1 if _fast(database) else 3)
    records = [r for r in caplog.records if r.name == "fastapi_asyncdb.statements"]
    sql = NOTE_BY_ID.statement.compile(dialect=database.engine.dialect).string
    assert len(records) == 3
    for record in records:
        fields: Any = record
        assert fields.db_statement == sql
        assert fields.db_role == "read"
        assert fields.request_id == "req-42"
        assert fields.db_duration_s > 0
        assert "req-42" in record.getMessage()
        assert "read" in record.getMessage()


async def test_statements_under_the_threshold_are_not_logged(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with Database(url=database_url, slow_statement_threshold=60) as database:
        with caplog.at_level(logging.DEBUG, logger="fastapi_asyncdb.statements"):
            async with database.read_connection() as connection:
                for _ in range(3):
                    await connection.execute(select(1))
    assert [r for r in caplog.records if r.name == "fastapi_asyncdb.statements"] == []


@pytest.mark.backends("postgresql")
async def test_the_instrumentation_with_its_sql_commenter_sends_statements_to_sqlalchemy(
    database: Database,
) -> None:
    # The commenter rewrites the SQL in its listener: only SQLAlchemy can run that.
    with instrumented(database, enable_commenter=True), sqlalchemy_runs() as runs:
        async with database.read_connection() as connection:
            for _ in range(3):
                await NOTE_BY_ID.one(connection, {"id": 1})
        spans = statement_spans()
    assert runs.of(NOTE_BY_ID.statement) == 3
    assert len(spans) == 3
    assert {s.instrumentation_scope.name for s in spans if s.instrumentation_scope} == {
        "opentelemetry.instrumentation.sqlalchemy"
    }


@pytest.mark.backends("postgresql")
async def test_the_instrumentation_switched_on_globally_traces_engines_made_afterwards(
    database: Database, database_url: str
) -> None:
    # As opentelemetry-instrument does, but after the library was imported.
    instrumentor = SQLAlchemyInstrumentor()
    instrumentor.instrument(skip_dep_check=True)
    try:
        async with Database(url=database_url) as traced:
            with recording(), sqlalchemy_runs() as runs:
                async with traced.read_connection() as connection:
                    for _ in range(3):
                        await NOTE_BY_ID.one(connection, {"id": 1})
                spans = statement_spans()
    finally:
        instrumentor.uninstrument()
    assert runs.of(NOTE_BY_ID.statement) == 1
    queries = [_query(span) for span in spans]
    assert len([query for query in queries if "FROM statements_note" in query]) == 3
