"""The hand-written SQLAlchemy floor: the usual twenty-line recipe, as users have it
before fastapi-asyncdb.

Module-level engine and sessionmaker, a yield dependency handing out an AsyncSession,
ORM `session.get` for reads, attribute changes plus `commit()` for writes, plain dicts out.
Settings: DATABASE_URL, POOL (pool_size, default 32), POOL_OVERFLOW (default 0),
POOL_TIMEOUT (seconds, default SQLAlchemy's 30).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

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
from bench.config import DEFAULT_POOL, SQLALCHEMY_URL

engine = create_async_engine(
    os.environ.get("DATABASE_URL", SQLALCHEMY_URL),
    poolclass=AsyncAdaptedQueuePool,
    pool_size=int(os.environ.get("POOL", DEFAULT_POOL)),
    max_overflow=int(os.environ.get("POOL_OVERFLOW", "0")),
    pool_timeout=float(os.environ.get("POOL_TIMEOUT", "30")),
    # Not in the users' recipe: lets the harness count this server's connections.
    connect_args={
        "server_settings": {"application_name": os.environ.get("BENCH_APP_NAME", "bench-recipe")}
    },
)
SessionLocal = async_sessionmaker(engine)


async def get_session() -> AsyncIterator[AsyncSession]:
    async with SessionLocal() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


app = FastAPI(telemetry=FASTAPI_TELEMETRY)


def world_dict(world: World) -> dict[str, int]:
    return {"id": world.id, "randomNumber": world.randomnumber}


@app.get("/db")
async def single_query(session: SessionDep) -> dict[str, int]:
    world = await session.get(World, random_id())
    assert world is not None  # every id 1..10000 exists
    return world_dict(world)


@app.get("/queries")
async def multiple_queries(session: SessionDep, queries: str | None = None) -> list[dict[str, int]]:
    worlds: list[dict[str, int]] = []
    for _ in range(query_count(queries)):
        world = await session.get(World, random_id())
        assert world is not None
        worlds.append(world_dict(world))
    return worlds


@app.get("/fortunes")
async def fortunes(session: SessionDep) -> HTMLResponse:
    rows = list((await session.scalars(select(Fortune))).all())
    rows.append(Fortune(id=0, message=ADDITIONAL_FORTUNE))  # transient: never added to the session
    rows.sort(key=lambda fortune: fortune.message)
    return HTMLResponse(FORTUNES_TEMPLATE.render(fortunes=rows), media_type=HTML_MEDIA_TYPE)


@app.get("/updates")
async def updates(session: SessionDep, queries: str | None = None) -> list[dict[str, int]]:
    worlds: list[World] = []
    for row_id in distinct_sorted_ids(query_count(queries)):
        world = await session.get(World, row_id)
        assert world is not None
        world.randomnumber = random_number()
        worlds.append(world)
    # Built before commit: after it, expire_on_commit makes the attributes reload lazily
    # (MissingGreenlet).
    result = [world_dict(world) for world in worlds]
    await session.commit()
    return result


@app.get("/slow")
async def slow(session: SessionDep, seconds: float = 0.5) -> dict[str, float]:
    await session.execute(
        text("SELECT pg_sleep(:seconds)"), {"seconds": min(max(seconds, 0.0), 5.0)}
    )
    return {"slept": seconds}
