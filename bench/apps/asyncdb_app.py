"""Contender 3: the endpoints written the way fastapi-asyncdb's README tells users to.

Default settings, from the environment (DATABASE_URL, DB_POOL_SIZE, DB_READ_POOL_SIZE, ...).
Hot reads use the read-only Core connection with statements built once, as the README's
performance guide says; writes use the ORM session committed before the response.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from sqlalchemy import bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from bench.apps.common import (
    ADDITIONAL_FORTUNE,
    FORTUNES_TEMPLATE,
    HTML_MEDIA_TYPE,
    distinct_sorted_ids,
    query_count,
    random_id,
    random_number,
)
from bench.apps.models import Fortune, World
from fastapi_asyncdb import Database, ReadConnectionDep, SessionDep

db = Database()
app = FastAPI(lifespan=db.lifespan)
db.install(app)


class WorldOut(BaseModel):
    id: int
    randomNumber: int  # noqa: N815 - the wire name TechEmpower prescribes

    @classmethod
    def of(cls, world: World) -> WorldOut:
        return cls(id=world.id, randomNumber=world.randomnumber)


# Built once: a statement built per request pays for its cache key every time.
WORLD_BY_ID = select(World.id, World.randomnumber).where(World.id == bindparam("id"))
ALL_FORTUNES = select(Fortune.id, Fortune.message)


async def _world_row(connection: AsyncConnection, row_id: int) -> WorldOut:
    row = (await connection.execute(WORLD_BY_ID, {"id": row_id})).one()
    return WorldOut(id=row.id, randomNumber=row.randomnumber)


async def _world(session: AsyncSession, row_id: int) -> World:
    world = await session.get(World, row_id)
    if world is None:
        raise LookupError(f"world {row_id} is missing: run python -m bench.schema")
    return world


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
    rows: list[Any] = list(await connection.execute(ALL_FORTUNES))
    rows.append(Fortune(id=0, message=ADDITIONAL_FORTUNE))  # transient, never in a session
    rows.sort(key=lambda fortune: fortune.message)
    return HTMLResponse(FORTUNES_TEMPLATE.render(fortunes=rows), media_type=HTML_MEDIA_TYPE)


@app.get("/updates")
async def updates(session: SessionDep, queries: str | None = None) -> list[WorldOut]:
    # Read everything first, then change it, as the README advises: a read after a change
    # would autoflush that one change, a round trip per row; this way the commit's single
    # flush sends all the UPDATEs as one executemany.
    worlds = [await _world(session, row_id) for row_id in distinct_sorted_ids(query_count(queries))]
    for world in worlds:
        world.randomnumber = random_number()
    # No commit here: the library commits when the endpoint returns, before the response.
    return [WorldOut.of(world) for world in worlds]


@app.get("/slow")
async def slow(connection: ReadConnectionDep, seconds: float = 0.5) -> dict[str, float]:
    await connection.execute(
        text("SELECT pg_sleep(:seconds)"), {"seconds": min(max(seconds, 0.0), 5.0)}
    )
    return {"slept": seconds}
