"""The default way: the endpoints as fastapi-asyncdb's first example writes them.

Default settings, from the environment (DATABASE_URL, DB_POOL_SIZE, DB_READ_POOL_SIZE, ...).
ORM objects throughout: reads take ``ReadSessionDep`` and ``session.get``, ``/updates``
takes ``SessionDep``, changes the objects' attributes and leaves the commit to the
library, which makes it before the response. Nothing here is tuned for speed.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from sqlalchemy import select, text

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
from fastapi_asyncdb import Database, ReadSessionDep, SessionDep, install

db = Database()
app = FastAPI(lifespan=db.lifespan, telemetry=FASTAPI_TELEMETRY)
install(app, db)


class WorldOut(BaseModel):
    id: int
    randomNumber: int  # noqa: N815 - the wire name TechEmpower prescribes


def _world_out(world: World | None) -> WorldOut:
    assert world is not None  # every id 1..10000 exists
    return WorldOut(id=world.id, randomNumber=world.randomnumber)


@app.get("/db")
async def single_query(session: ReadSessionDep) -> WorldOut:
    return _world_out(await session.get(World, random_id()))


@app.get("/queries")
async def multiple_queries(session: ReadSessionDep, queries: str | None = None) -> list[WorldOut]:
    return [_world_out(await session.get(World, random_id())) for _ in range(query_count(queries))]


@app.get("/fortunes")
async def fortunes(session: ReadSessionDep) -> HTMLResponse:
    rows: list[Any] = list((await session.scalars(select(Fortune))).all())
    rows.append(Fortune(id=0, message=ADDITIONAL_FORTUNE))  # transient, never in a session
    rows.sort(key=lambda fortune: fortune.message)
    return HTMLResponse(FORTUNES_TEMPLATE.render(fortunes=rows), media_type=HTML_MEDIA_TYPE)


@app.get("/updates")
async def updates(session: SessionDep, queries: str | None = None) -> list[WorldOut]:
    worlds = []
    for row_id in distinct_sorted_ids(query_count(queries)):
        world = await session.get(World, row_id)
        assert world is not None
        world.randomnumber = random_number()
        worlds.append(world)
    # Committed by the library after the endpoint returns and before the response is
    # sent; the objects stay readable after the commit.
    return [_world_out(world) for world in worlds]


@app.get("/slow")
async def slow(session: ReadSessionDep, seconds: float = 0.5) -> dict[str, float]:
    await session.execute(
        text("SELECT pg_sleep(:seconds)"), {"seconds": min(max(seconds, 0.0), 5.0)}
    )
    return {"slept": seconds}
