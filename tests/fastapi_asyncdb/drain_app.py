"""A small app on the library, for shutdown tests under real servers (uvicorn, gunicorn).

Serve it with ``uvicorn --factory tests.fastapi_asyncdb.drain_app:create_app`` or
``gunicorn -k uvicorn_worker.UvicornWorker 'tests.fastapi_asyncdb.drain_app:create_app()'``;
the database comes from ``DATABASE_URL`` and ``DB_*`` as in any app.

- ``POST /writes/{key}?hold=<seconds>`` writes one row and holds its transaction open
  that long before the response (the commit comes after): a slow unit of work.
- With ``DRAIN_APP_BACKGROUND_HOLD=<seconds>``, a background task started at startup
  runs units of work back to back, each holding its transaction that long, and is
  never stopped by the app: the drain at shutdown has to deal with it, as with any
  task a real app forgets.

Every log line carries the process id, so a test can tell the workers apart.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fastapi_asyncdb import Database, DatabaseUnavailableError, SessionDep, install

logger = logging.getLogger("drain_app")

BACKGROUND_KEY_PREFIX = "background-"


class Base(DeclarativeBase):
    pass


class Write(Base):
    __tablename__ = "drain_writes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(100), unique=True)
    pid: Mapped[int] = mapped_column(Integer)


async def write_forever(database: Database, hold: float) -> None:
    """Units of work back to back until the database refuses them or cancels one."""
    pid = os.getpid()
    for number in itertools.count():
        key = f"{BACKGROUND_KEY_PREFIX}{pid}-{number}"
        try:
            async with database.transaction() as session:
                session.add(Write(key=key, pid=pid))
                await session.flush()
                await asyncio.sleep(hold)
        except DatabaseUnavailableError as error:
            logger.info("background unit %s refused: %s", key, error.reason)
            return
        except asyncio.CancelledError:
            logger.info("background unit %s cancelled", key)
            raise
        logger.info("background unit %s committed", key)


def create_app() -> FastAPI:
    logging.basicConfig(
        level=logging.INFO, format="%(process)d %(levelname)s [%(name)s] %(message)s"
    )
    database = Database()
    background_hold = os.environ.get("DRAIN_APP_BACKGROUND_HOLD")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with database.lifespan(app):
            if background_hold is not None:
                # Kept only so that the task is not garbage collected; never stopped.
                app.state.background = asyncio.create_task(
                    write_forever(database, float(background_hold))
                )
            yield

    app = FastAPI(lifespan=lifespan)
    install(app, database)

    @app.post("/writes/{key}", status_code=201)
    async def write(key: str, session: SessionDep, hold: float = 0) -> dict[str, object]:
        # Which requests the server started: a client's send time does not say it (a
        # request sent just before the signal may not have been read yet).
        logger.info("request %s started", key)
        session.add(Write(key=key, pid=os.getpid()))
        await session.flush()
        await asyncio.sleep(hold)
        return {"key": key, "pid": os.getpid()}

    @app.get("/pid")
    async def pid() -> dict[str, int]:
        return {"pid": os.getpid()}

    return app
