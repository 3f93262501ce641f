"""An env.py that cannot use the connection handed over fails in one line, saying what to do."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fastapi_asyncdb import Database
from fastapi_asyncdb.migrations import MigrationError

from .migration_project import drop_project_tables, project_tables, write_project

pytestmark = pytest.mark.usefixtures("clean_environment")

ROOT = Path(__file__).resolve().parents[2]

# The online part of `alembic init -t async`'s env.py: its own engine, run by asyncio.run.
ASYNC_TEMPLATE_ENV = """\
import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.ext.asyncio import async_engine_from_config

config = context.config


def do_run_migrations(connection):
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations():
    connectable = async_engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    async with connectable.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await connectable.dispose()


asyncio.run(run_async_migrations())
"""


@pytest.fixture
async def url(database_url: str) -> AsyncIterator[str]:
    await drop_project_tables(database_url)
    yield database_url
    await drop_project_tables(database_url)


@pytest.fixture
def async_template_project(tmp_path: Path) -> Path:
    config = write_project(tmp_path / "project", 2)
    (config.parent / "env.py").write_text(ASYNC_TEMPLATE_ENV)
    return config


async def test_the_async_template_env_py_fails_in_one_line_naming_run_migrations(
    url: str, async_template_project: Path
) -> None:
    async with Database(url=url) as database:
        with pytest.raises(MigrationError) as raised:
            await database.migrate(async_template_project)
    message = str(raised.value)
    assert "\n" not in message
    assert "asyncio.run" in message
    assert "run_migrations(Base.metadata)" in message
    assert "docs/migrations.md" in message
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__
    assert await project_tables(url) == (set(), [])


async def test_the_migrate_command_prints_one_line_for_the_async_template(
    url: str, async_template_project: Path
) -> None:
    environment = {
        name: value
        for name, value in os.environ.items()
        if name != "DATABASE_URL" and not name.startswith("DB_")
    }
    environment |= {"DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fastapi_asyncdb.cli",
        "migrate",
        "--config",
        str(async_template_project),
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    assert process.returncode == 1
    lines = stderr.decode().splitlines()
    assert len(lines) == 1
    assert "run_migrations(Base.metadata)" in lines[0]
