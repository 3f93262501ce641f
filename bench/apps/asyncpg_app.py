"""The physical limit: the endpoints written straight on an asyncpg pool.

Raw SQL, one pool opened in the lifespan, orjson bytes returned as they are.
Settings: DATABASE_URL (SQLAlchemy form accepted), POOL (connections, default 32).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

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
from bench.config import DEFAULT_POOL, SQLALCHEMY_URL

READ_ROW_SQL = "SELECT randomnumber FROM world WHERE id = $1"
WRITE_ROW_SQL = "UPDATE world SET randomnumber = $2 WHERE id = $1"
FORTUNES_SQL = "SELECT id, message FROM fortune"

# Module-level like TechEmpower's entry: a global is the cheapest lookup per request.
_pool: asyncpg.Pool | None = None


def _dsn() -> str:
    # asyncpg wants the libpq form; the other contenders share the SQLAlchemy form.
    return os.environ.get("DATABASE_URL", SQLALCHEMY_URL).replace("+asyncpg", "", 1)


def _get_pool() -> asyncpg.Pool:
    if _pool is None:
        raise RuntimeError("the pool is opened by the lifespan")
    return _pool


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    global _pool
    size = int(os.environ.get("POOL", DEFAULT_POOL))
    _pool = await asyncpg.create_pool(
        _dsn(),
        min_size=size,
        max_size=size,
        # Lets the harness count this server's connections apart from anyone else's.
        server_settings={"application_name": os.environ.get("BENCH_APP_NAME", "bench-asyncpg")},
    )
    try:
        yield
    finally:
        await _pool.close()
        _pool = None


app = FastAPI(lifespan=lifespan, telemetry=FASTAPI_TELEMETRY)


class OrjsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


@app.get("/db")
async def single_query() -> Response:
    row_id = random_id()
    async with _get_pool().acquire() as conn:
        number = await conn.fetchval(READ_ROW_SQL, row_id)
    return OrjsonResponse({"id": row_id, "randomNumber": number})


@app.get("/queries")
async def multiple_queries(queries: str | None = None) -> Response:
    ids = [random_id() for _ in range(query_count(queries))]
    async with _get_pool().acquire() as conn:
        # fetchval reuses the connection's statement cache: no extra PREPARE round trip.
        worlds = [{"id": i, "randomNumber": await conn.fetchval(READ_ROW_SQL, i)} for i in ids]
    return OrjsonResponse(worlds)


@app.get("/fortunes")
async def fortunes() -> HTMLResponse:
    async with _get_pool().acquire() as conn:
        rows: list[Any] = list(await conn.fetch(FORTUNES_SQL))
    rows.append({"id": 0, "message": ADDITIONAL_FORTUNE})
    rows.sort(key=lambda row: row["message"])
    return HTMLResponse(FORTUNES_TEMPLATE.render(fortunes=rows), media_type=HTML_MEDIA_TYPE)


@app.get("/updates")
async def updates(queries: str | None = None) -> Response:
    ids = distinct_sorted_ids(query_count(queries))
    async with _get_pool().acquire() as conn:
        for row_id in ids:
            await conn.fetchval(
                READ_ROW_SQL, row_id
            )  # the read the test requires; its value is replaced
        new_numbers = [(row_id, random_number()) for row_id in ids]
        # executemany pipelines the statements and is atomic (one implicit transaction).
        await conn.executemany(WRITE_ROW_SQL, new_numbers)
    return OrjsonResponse([{"id": i, "randomNumber": n} for i, n in new_numbers])


@app.get("/slow")
async def slow(seconds: float = 0.5) -> Response:
    async with _get_pool().acquire() as conn:
        await conn.execute("SELECT pg_sleep($1)", min(max(seconds, 0.0), 5.0))
    return OrjsonResponse({"slept": seconds})
