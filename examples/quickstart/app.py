from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fastapi_asyncdb import Database, ReadSessionDep, SessionDep, install


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(500))


class NoteIn(BaseModel):
    body: str


class NoteOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    body: str


db = Database()  # settings from DATABASE_URL and DB_*; a SQLite file by default


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with db.lifespan(app):  # engines exist from here to shutdown
        await db.create_all(Base.metadata)  # fine for a demo; real apps migrate
        yield


app = FastAPI(lifespan=lifespan)
install(app, db)  # error answers, /health routes, the request's unit of work


@app.post("/notes", status_code=201)
async def create_note(note: NoteIn, session: SessionDep) -> NoteOut:
    row = Note(body=note.body)
    session.add(row)
    await session.flush()  # the id; committed before the response is sent
    return NoteOut.model_validate(row)


@app.get("/notes/{note_id}")
async def read_note(note_id: int, session: ReadSessionDep) -> NoteOut:
    row = await session.get(Note, note_id)  # read-only: no BEGIN, no ROLLBACK
    if row is None:
        raise HTTPException(404, f"note {note_id} does not exist")
    return NoteOut.model_validate(row)
