"""A small app as users write them, for the plugin's tests: every way this library writes.

Its module is imported by the test runs the plugin's tests start (pytester), never by the
plugin's tests themselves, so that each run gets the app fresh, as a user's suite would.
``app`` lets the Database's lifespan be the app's; ``custom_app`` has a lifespan of its
own that enters the Database's and yields state.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, BackgroundTasks, FastAPI, HTTPException, Request
from pydantic import BaseModel
from sqlalchemy import ForeignKey, Integer, String, bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fastapi_asyncdb import (
    Database,
    DatabaseDep,
    Prepared,
    ReadConnectionDep,
    ReadSessionDep,
    Retry,
    SessionDep,
    install,
)


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    body: Mapped[str] = mapped_column(String(100), unique=True)


class Audit(Base):
    """Written by a background task after the response."""

    __tablename__ = "audits"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    note_id: Mapped[int] = mapped_column(ForeignKey("notes.id"))
    event: Mapped[str] = mapped_column(String(20))


class NoteIn(BaseModel):
    body: str


class NoteOut(BaseModel):
    id: int
    body: str


ALL_NOTES = Prepared(select(Note.id, Note.body).order_by(Note.id))
RENAME = update(Note).where(Note.id == bindparam("note_id")).values(body=bindparam("new_body"))
# A real server error of the kind run_transaction retries (serialization failure).
LOSE_A_RACE = {
    "postgresql": "DO $$ BEGIN RAISE EXCEPTION 'lost a race' USING ERRCODE = '40001'; END $$",
    "mysql": "BEGIN NOT ATOMIC SIGNAL SQLSTATE '40001' "
    "SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = 'lost a race'; END",
}

router = APIRouter()


async def record(database: Database, note_id: int, event: str) -> None:
    async with database.transaction() as session:
        session.add(Audit(note_id=note_id, event=event))


@router.post("/notes", status_code=201)
async def create(
    note: NoteIn, session: SessionDep, database: DatabaseDep, tasks: BackgroundTasks
) -> NoteOut:
    row = Note(body=note.body)
    session.add(row)
    await session.flush()
    tasks.add_task(record, database, row.id, "created")
    return NoteOut(id=row.id, body=row.body)


@router.post("/notes/refused", status_code=422)
async def create_then_refuse(note: NoteIn, session: SessionDep) -> NoteOut:
    """Writes, then answers an error: the request's unit of work is rolled back."""
    session.add(Note(body=note.body))
    await session.flush()
    raise HTTPException(422, "refused after writing")


@router.post("/notes/kept-despite-an-error", status_code=400)
async def commit_then_refuse(note: NoteIn, session: SessionDep) -> NoteOut:
    """Commits itself, then answers an error: the write is kept, as documented."""
    session.add(Note(body=note.body))
    await session.commit()
    raise HTTPException(400, "kept, but refused")


_TASKS: set[asyncio.Task[None]] = set()


@router.post("/notes/later", status_code=202)
async def create_later(note: NoteIn, database: DatabaseDep) -> dict[str, str]:
    """Answers at once; a task of the app's own writes a little later."""
    begun = asyncio.Event()

    async def write() -> None:
        async with database.transaction() as session:
            begun.set()
            await asyncio.sleep(0.2)
            session.add(Note(body=note.body))

    task = asyncio.get_running_loop().create_task(write())
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
    await begun.wait()
    return {"status": "accepted"}


@router.get("/notes/{note_id}")
async def read(note_id: int, session: ReadSessionDep) -> NoteOut:
    row = await session.get(Note, note_id)
    if row is None:
        raise HTTPException(404)
    return NoteOut(id=row.id, body=row.body)


@router.get("/notes")
async def read_all(connection: ReadConnectionDep) -> list[NoteOut]:
    return [NoteOut(id=row.id, body=row.body) for row in await ALL_NOTES.all(connection)]


@router.post("/notes/{note_id}/rename")
async def rename(note_id: int, note: NoteIn, database: DatabaseDep) -> dict[str, str]:
    await database.run_statement(RENAME, {"note_id": note_id, "new_body": note.body})
    return {"status": "renamed"}


@router.post("/notes/with-retries", status_code=201)
async def create_with_retries(note: NoteIn, database: DatabaseDep) -> dict[str, int]:
    attempts = 0

    async def work(session: AsyncSession) -> int:
        nonlocal attempts
        attempts += 1
        row = Note(body=note.body)
        session.add(row)
        await session.flush()
        lose = LOSE_A_RACE.get(database.backend.name)
        if attempts == 1 and lose is not None:
            await session.execute(text(lose))
        return row.id

    note_id = await database.run_transaction(work, retry=Retry(attempts=3, base_delay=0))
    return {"id": note_id, "attempts": attempts}


@router.post("/notes/read-then-write", status_code=201)
async def read_then_write(note: NoteIn, reads: ReadSessionDep, session: SessionDep) -> NoteOut:
    """Reads first, then writes: the read session outlives the unit of work's commit."""
    if await reads.scalar(select(func.count()).where(Note.body == note.body)):
        raise HTTPException(409)
    row = Note(body=note.body)
    session.add(row)
    await session.flush()
    return NoteOut(id=row.id, body=row.body)


@router.post("/notes/write-then-read", status_code=201)
async def write_then_read(note: NoteIn, session: SessionDep, reads: ReadSessionDep) -> NoteOut:
    """Writes first, then reads on the read path while the write is not committed."""
    row = Note(body=note.body)
    session.add(row)
    await session.flush()
    await reads.scalar(select(func.count()).select_from(Note))
    return NoteOut(id=row.id, body=row.body)


@router.get("/audits")
async def audits(session: ReadSessionDep) -> list[str]:
    return list((await session.scalars(select(Audit.event).order_by(Audit.id))).all())


@router.get("/greeting")
async def greeting(request: Request) -> dict[str, Any]:
    return {"greeting": request.state.greeting, "started": request.app.state.started}


db = Database()
app = FastAPI(lifespan=db.lifespan)
install(app, db)
app.include_router(router)

custom_db = Database()
LIFESPAN_STARTS: list[str] = []


@asynccontextmanager
async def custom_lifespan(app: FastAPI) -> AsyncIterator[dict[str, str]]:
    async with custom_db.lifespan(app):
        # Startup work on the database: the schema must already be there.
        async with custom_db.read_session() as session:
            await session.scalar(select(func.count()).select_from(Note))
        app.state.started = True
        LIFESPAN_STARTS.append("custom_app")
        yield {"greeting": "hello"}


custom_app = FastAPI(lifespan=custom_lifespan)
install(custom_app, custom_db)
custom_app.include_router(router)
