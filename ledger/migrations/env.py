"""Alembic environment: fastapi-asyncdb's, with the ledger's tables."""

from fastapi_asyncdb.migrations import run_migrations
from ledger.models import Base

run_migrations(Base.metadata)
