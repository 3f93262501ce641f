"""SQLModel's models and its session class work through the units of work and the
dependencies, as with plain SQLAlchemy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlmodel import Field, SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelSession

from fastapi_asyncdb import Database, get_read_session, get_session, install

pytestmark = pytest.mark.usefixtures("clean_environment")


class Hero(SQLModel, table=True):
    __tablename__ = "sqlmodel_heroes"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True)


class HeroIn(SQLModel):
    name: str


# The dependencies are the library's; the alias names SQLModel's session class.
HeroSession = Annotated[SQLModelSession, Depends(get_session, scope="function")]
HeroReadSession = Annotated[SQLModelSession, Depends(get_read_session)]


def build_app(database: Database) -> FastAPI:
    app = FastAPI()
    install(app, database)

    @app.post("/heroes", status_code=201)
    async def create(hero: HeroIn, session: HeroSession) -> Hero:
        row = Hero.model_validate(hero)
        session.add(row)
        await session.flush()
        return row

    @app.get("/heroes")
    async def list_heroes(session: HeroReadSession) -> list[Hero]:
        return list((await session.exec(select(Hero).order_by(Hero.name))).all())

    return app


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with Database(url=database_url, session_class=SQLModelSession) as database:
        tables = [SQLModel.metadata.tables["sqlmodel_heroes"]]
        async with database.engine.begin() as connection:
            await connection.run_sync(SQLModel.metadata.drop_all, tables=tables)
            await connection.run_sync(SQLModel.metadata.create_all, tables=tables)
        yield database


async def test_sqlmodel_models_are_written_and_read_through_the_dependencies(
    database: Database,
) -> None:
    transport = httpx.ASGITransport(app=build_app(database))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        created = await client.post("/heroes", json={"name": "Deadpond"})
        assert created.status_code == 201
        assert (await client.post("/heroes", json={"name": "Deadpond"})).status_code == 409
        await client.post("/heroes", json={"name": "Rusty-Man"})
        heroes = (await client.get("/heroes")).json()
    assert [hero["name"] for hero in heroes] == ["Deadpond", "Rusty-Man"]
    assert created.json()["id"] == heroes[0]["id"]


async def test_units_of_work_hand_out_sqlmodel_sessions(database: Database) -> None:
    async with database.transaction() as session:
        assert isinstance(session, SQLModelSession)
        session.add(Hero(name="Tarantula"))
    async with database.read_session() as session:
        assert isinstance(session, SQLModelSession)
        hero = (await session.exec(select(Hero))).one()
    assert hero.name == "Tarantula"
