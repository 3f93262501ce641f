"""The FastAPI application: routes, the database's lifespan, migrations at startup."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from pydantic_settings import BaseSettings, SettingsConfigDict

from fastapi_asyncdb import Database, install

from . import accounts, transfers
from .migrate import upgrade

__all__ = ["LedgerSettings", "app", "create_app"]


class LedgerSettings(BaseSettings):
    """The service's own settings; the database's are fastapi-asyncdb's (DATABASE_URL, DB_*)."""

    model_config = SettingsConfigDict(env_prefix="LEDGER_", extra="forbid", frozen=True)

    migrate_on_startup: bool = True


def create_app(
    database: Database | None = None, *, migrate_on_startup: bool | None = None
) -> FastAPI:
    """Build the app; nothing connects until its lifespan starts."""
    db = database if database is not None else Database()
    if migrate_on_startup is None:
        migrate_on_startup = LedgerSettings().migrate_on_startup

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with db.lifespan(app):
            if migrate_on_startup:
                # Before the first request: a route must never meet an older schema.
                await upgrade(db)
            yield

    # /docs and /redoc with their scripts served from a package, not a CDN: they work
    # where the service has no internet access.
    app = FastAPIOffline(title="ledger", version="0.1.0", lifespan=lifespan)
    install(app, db)
    app.include_router(accounts.router)
    app.include_router(transfers.router)
    return app


# For `uvicorn ledger.app:app`; building it only validates the settings.
app = create_app()
