from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fastapi_asyncdb import (
    Database,
    IntegerAfter,
    KeysetPage,
    PageLimit,
    ReadSessionDep,
    install,
    keyset_page,
)


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "example_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(50))


class AccountOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    owner: str


db = Database()  # DATABASE_URL
app = FastAPI(lifespan=db.lifespan)
install(app, db)


@app.get("/accounts", response_model=KeysetPage[AccountOut])
async def accounts(
    session: ReadSessionDep,
    after: IntegerAfter = None,  # bounded: ?after=3000000000 is a 422, not a 500
    limit: PageLimit = 50,
) -> KeysetPage[Account]:
    return await keyset_page(session, select(Account), key=Account.id, after=after, limit=limit)
