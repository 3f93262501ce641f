"""The fast way: the endpoints as fastapi-asyncdb's performance guide writes them.

Default settings, from the environment (DATABASE_URL, DB_POOL_SIZE, DB_READ_POOL_SIZE, ...).
Hot statements are built once as ``Prepared`` and run on the read connection; the
one-statement write of ``/updates`` is a unit of work of its own
(``Database.run_statement``), committed before the response.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from sqlalchemy import bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bench.apps.common import (
    ADDITIONAL_FORTUNE,
    FASTAPI_TELEMETRY,
    FORTUNES_TEMPLATE,
    HTML_MEDIA_TYPE,
    distinct_sorted_ids,
    query_count,
    random_id,
    random_number,
)
from bench.apps.models import Fortune, World
from bench.apps.otel import serve_metrics_reader
from fastapi_asyncdb import Database, Prepared, ReadConnectionDep, install

db = Database()
app = FastAPI(lifespan=db.lifespan, telemetry=FASTAPI_TELEMETRY)
# /metrics, and with BENCH_OTEL_METRICS=1 an OpenTelemetry in-memory reader's points:
# bench.overload checks both against what its clients saw.
install(app, db, metrics=True)
serve_metrics_reader(app, db)


class WorldOut(BaseModel):
    id: int
    randomNumber: int  # noqa: N815 - the wire name TechEmpower prescribes


# Built once, at import: compiled on first use, then run as prepared statements.
WORLD_BY_ID = Prepared(select(World.id, World.randomnumber).where(World.id == bindparam("id")))
ALL_FORTUNES = Prepared(select(Fortune.id, Fortune.message))
SET_RANDOM_NUMBER = (
    update(World).where(World.id == bindparam("world_id")).values(randomnumber=bindparam("number"))
)


async def _world_row(connection: AsyncConnection, row_id: int) -> WorldOut:
    row = await WORLD_BY_ID.one(connection, {"id": row_id})
    return WorldOut(id=row.id, randomNumber=row.randomnumber)


@app.get("/db")
async def single_query(connection: ReadConnectionDep) -> WorldOut:
    return await _world_row(connection, random_id())


@app.get("/queries")
async def multiple_queries(
    connection: ReadConnectionDep, queries: str | None = None
) -> list[WorldOut]:
    return [await _world_row(connection, random_id()) for _ in range(query_count(queries))]


@app.get("/fortunes")
async def fortunes(connection: ReadConnectionDep) -> HTMLResponse:
    rows: list[Any] = list(await ALL_FORTUNES.all(connection))
    rows.append(Fortune(id=0, message=ADDITIONAL_FORTUNE))  # transient, never in a session
    rows.sort(key=lambda fortune: fortune.message)
    return HTMLResponse(FORTUNES_TEMPLATE.render(fortunes=rows), media_type=HTML_MEDIA_TYPE)


@app.get("/updates")
async def updates(connection: ReadConnectionDep, queries: str | None = None) -> list[WorldOut]:
    # The new numbers do not depend on the values read, so the reads need not be in
    # the write's transaction, and the write is one statement: as the README advises,
    # the reads run on the read connection and the write is a unit of work of its own,
    # committed before the response.
    worlds = [
        await _world_row(connection, row_id) for row_id in distinct_sorted_ids(query_count(queries))
    ]
    for world in worlds:
        world.randomNumber = random_number()
    await db.run_statement(
        SET_RANDOM_NUMBER,
        [{"world_id": world.id, "number": world.randomNumber} for world in worlds],
    )
    return worlds


@app.get("/slow")
async def slow(connection: ReadConnectionDep, seconds: float = 0.5) -> dict[str, float]:
    await connection.execute(
        text("SELECT pg_sleep(:seconds)"), {"seconds": min(max(seconds, 0.0), 5.0)}
    )
    return {"slept": seconds}
