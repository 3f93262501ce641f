"""A small Alembic project, generated into a directory: alembic.ini, env.py, revisions.

Revision ``rNN`` creates table ``mig_NN``; they form one chain from ``r01``. With
``MIGRATION_LOG`` set, each revision appends when it starts and ends; with
``MIGRATION_RELEASE`` set, ``r01`` waits for that file to exist before it changes
anything, so a test can hold a migration open while another process tries to migrate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import inspect, text

from fastapi_asyncdb import Database

__all__ = [
    "drop_project_tables",
    "project_tables",
    "revision_ids",
    "wait_until",
    "write_project",
]

INI = """\
[alembic]
script_location = %(here)s
path_separator = os
"""

ENV = """\
from fastapi_asyncdb.migrations import run_migrations

run_migrations(None)
"""

# For `alembic revision`, which writes new revisions from it.
TEMPLATE = """\
\"\"\"${message}\"\"\"

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = None
depends_on = None


def upgrade():
    ${upgrades if upgrades else "pass"}


def downgrade():
    ${downgrades if downgrades else "pass"}
"""

REVISION = """\
import os
import time
import asyncio
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = {revision!r}
down_revision = {down_revision!r}
branch_labels = None
depends_on = None


def _log(event):
    log = os.environ.get("MIGRATION_LOG")
    if log:
        with open(log, "a") as file:
            file.write(f"{{event}} {{revision}} {{os.getpid()}}\\n")


def upgrade():
    _log("start")
    release = os.environ.get("MIGRATION_RELEASE")
    if release and revision == "r01":
        deadline = time.monotonic() + 60
        while not Path(release).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    op.create_table({table!r}, sa.Column("id", sa.Integer, primary_key=True))
    {extra}
    _log("end")


def downgrade():
    op.drop_table({table!r})
"""


def revision_ids(count: int) -> list[str]:
    return [f"r{number:02d}" for number in range(1, count + 1)]


def write_project(directory: Path, count: int, *, failing: str | None = None) -> Path:
    """Write the project with ``count`` revisions; return its alembic.ini.

    ``failing``: a revision whose upgrade, after creating its table, runs SQL the
    database refuses.
    """
    versions = directory / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    (directory / "alembic.ini").write_text(INI)
    (directory / "env.py").write_text(ENV)
    (directory / "script.py.mako").write_text(TEMPLATE)
    for old in versions.glob("*.py"):
        old.unlink()
    previous = None
    for revision in revision_ids(count):
        extra = 'op.execute("SELECT * FROM no_such_table")' if revision == failing else "pass"
        (versions / f"{revision}.py").write_text(
            REVISION.format(
                revision=revision,
                down_revision=previous,
                table=f"mig_{revision[1:]}",
                extra=extra,
            )
        )
        previous = revision
    return directory / "alembic.ini"


async def project_tables(database_url: str) -> tuple[set[str], list[str]]:
    """The project's tables and the version table's rows, read beside any writer."""
    async with Database(url=database_url) as database, database.read_connection() as connection:
        names = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
        versions: list[str] = []
        if "alembic_version" in names:
            result = await connection.execute(text("SELECT version_num FROM alembic_version"))
            versions = sorted(result.scalars())
    return {name for name in names if name.startswith("mig_")}, versions


async def drop_project_tables(database_url: str) -> None:
    async with Database(url=database_url) as database, database.engine.begin() as connection:
        names = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
        for name in names:
            if name.startswith("mig_") or name == "alembic_version":
                await connection.execute(text(f"DROP TABLE {name}"))


async def wait_until(condition: Callable[[], bool], *, within: float = 30) -> None:
    """Until ``condition()`` holds (a file another process writes, say); fails after ``within``."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - another process's file gives no event
            await asyncio.sleep(0.05)
