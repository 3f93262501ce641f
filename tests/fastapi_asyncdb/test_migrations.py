"""Database.migrate and migration_status: Alembic on the Database's engine, one at a time."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from fastapi_asyncdb import Database
from fastapi_asyncdb.backends.postgresql import advisory_lock_key
from fastapi_asyncdb.migrations import (
    MigrationError,
    MigrationLockTimeoutError,
    downgrade,
    lock_name,
    migration_lock,
)

from .migration_project import (
    drop_project_tables,
    project_tables,
    revision_ids,
    wait_until,
    write_project,
)

pytestmark = pytest.mark.usefixtures("clean_environment")

REVISIONS = 4
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def url(database_url: str) -> AsyncIterator[str]:
    """The test database, without the project's tables before and after."""
    await drop_project_tables(database_url)
    yield database_url
    await drop_project_tables(database_url)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "project", REVISIONS)


async def test_migrate_builds_the_schema_from_empty_and_a_second_run_applies_nothing(
    url: str, project: Path
) -> None:
    async with Database(url=url) as database:
        first = await database.migrate(project)
        second = await database.migrate(project)

    every = tuple(revision_ids(REVISIONS))
    assert (first.previous, first.current, first.applied) == ((), every[-1:], every)
    assert (second.previous, second.current, second.applied) == (every[-1:], every[-1:], ())
    tables, versions = await project_tables(url)
    assert tables == {f"mig_{revision[1:]}" for revision in every}
    assert versions == [every[-1]]


async def test_status_lists_exactly_the_revisions_an_upgrade_to_each_target_leaves(
    url: str, project: Path
) -> None:
    every = revision_ids(REVISIONS)
    async with Database(url=url) as database:
        status = await database.migration_status(project)
        assert (status.current, status.heads, status.pending) == ((), (every[-1],), tuple(every))
        for done, target in enumerate(every, start=1):
            result = await database.migrate(project, target)
            status = await database.migration_status(project)

            assert result.applied == (target,)
            assert status.current == (target,)
            assert status.pending == tuple(every[done:])
            assert status.is_behind is (done < len(every))


async def test_a_database_migrated_by_a_newer_release_is_not_behind_and_is_not_downgraded(
    url: str, project: Path, tmp_path: Path
) -> None:
    older = write_project(tmp_path / "older", REVISIONS - 1)
    async with Database(url=url) as database:
        await database.migrate(project)
        status = await database.migration_status(older)
        with pytest.raises(MigrationError, match="migrations do not know"):
            await database.migrate(older)

    assert status.current == (revision_ids(REVISIONS)[-1],)
    assert not status.is_behind
    assert (await project_tables(url))[1] == [revision_ids(REVISIONS)[-1]]


async def test_databases_migrating_at_once_apply_each_revision_once(
    url: str, project: Path
) -> None:
    databases = [Database(url=url) for _ in range(3)]
    for database in databases:
        await database.start()
    try:
        results = await asyncio.gather(*(database.migrate(project) for database in databases))
    finally:
        for database in databases:
            await database.stop()

    applied = sorted(revision for result in results for revision in result.applied)
    assert applied == revision_ids(REVISIONS)
    assert (await project_tables(url))[1] == [revision_ids(REVISIONS)[-1]]


async def test_migrate_waits_for_the_lock_held_elsewhere_and_then_migrates(
    url: str, project: Path
) -> None:
    async with Database(url=url) as holder, Database(url=url) as waiter:
        async with migration_lock(holder.engine, holder.backend):
            waiting = asyncio.create_task(waiter.migrate(project, lock_timeout=30))
            await asyncio.sleep(1)
            assert not waiting.done()
            assert (await project_tables(url))[0] == set()
        result = await asyncio.wait_for(waiting, 30)

    assert result.applied == tuple(revision_ids(REVISIONS))


async def test_lock_not_obtained_in_time_fails_with_a_clear_error_and_migrates_nothing(
    url: str, project: Path
) -> None:
    async with (
        Database(url=url) as holder,
        Database(url=url) as waiter,
        migration_lock(holder.engine, holder.backend),
    ):
        started = time.monotonic()
        with pytest.raises(MigrationLockTimeoutError, match=r"not obtained within 0\.5 s"):
            await waiter.migrate(project, lock_timeout=0.5)
        waited = time.monotonic() - started

    assert 0.5 <= waited < 5
    assert await project_tables(url) == (set(), [])


async def test_a_failing_migration_releases_the_lock(url: str, tmp_path: Path) -> None:
    failing = write_project(tmp_path / "failing", REVISIONS, failing="r02")
    async with Database(url=url) as first, Database(url=url) as second:
        with pytest.raises(DBAPIError, match="no_such_table"):
            await first.migrate(failing)
        async with migration_lock(second.engine, second.backend, lock_timeout=0):
            pass


async def test_the_lock_of_a_killed_process_is_released_with_its_connection(
    url: str, project: Path, tmp_path: Path
) -> None:
    log, release = tmp_path / "log", tmp_path / "release"
    holder = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "fastapi_asyncdb.cli", "migrate", "--config", str(project)),
        env={**_environment(url), "MIGRATION_LOG": str(log), "MIGRATION_RELEASE": str(release)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_until(lambda: log.exists() and "start r01" in log.read_text())
    finally:
        holder.kill()
        await holder.wait()

    async with Database(url=url) as database:
        result = await database.migrate(project, lock_timeout=30)
    assert result.applied == tuple(revision_ids(REVISIONS))


async def test_unknown_revision_is_a_migration_error(url: str, project: Path) -> None:
    async with Database(url=url) as database:
        with pytest.raises(MigrationError, match="Can't locate revision identified by 'nope'"):
            await database.migrate(project, "nope")


async def test_missing_configuration_file_is_named(tmp_path: Path, url: str) -> None:
    async with Database(url=url) as database:
        with pytest.raises(MigrationError, match=r"no Alembic configuration at .*missing\.ini"):
            await database.migrate(tmp_path / "missing.ini")


async def test_without_alembic_migrate_names_the_extra_to_install(
    url: str, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An import of a module set to None in sys.modules fails, as if not installed.
    monkeypatch.setitem(sys.modules, "alembic", None)
    async with Database(url=url) as database:
        with pytest.raises(MigrationError, match=r"pip install 'fastapi-asyncdb\[migrations\]'"):
            await database.migrate(project)
        with pytest.raises(MigrationError, match=r"fastapi-asyncdb\[migrations\]"):
            await database.migration_status(project)


def test_the_package_and_its_command_import_without_alembic() -> None:
    code = (
        "import sys; sys.modules['alembic'] = None\n"
        "import fastapi_asyncdb, fastapi_asyncdb.migrations, fastapi_asyncdb.cli\n"
        "assert 'alembic' not in {m.split('.')[0] for m in sys.modules if sys.modules[m]}\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr


async def test_alembic_command_line_migrates_from_the_environment_under_the_lock(
    url: str, project: Path
) -> None:
    async with Database(url=url) as holder, migration_lock(holder.engine, holder.backend):
        migrating = asyncio.create_task(_alembic(url, "-c", str(project), "upgrade", "head"))
        await asyncio.sleep(3)
        assert not migrating.done()
        assert (await project_tables(url))[0] == set()
    completed = await asyncio.wait_for(migrating, 60)

    assert completed.returncode == 0, completed.stderr
    assert (await project_tables(url))[1] == [revision_ids(REVISIONS)[-1]]


@pytest.mark.parametrize("driver", ["postgresql+asyncpg", "mysql+asyncmy"])
async def test_alembic_offline_sql_connects_nowhere(project: Path, driver: str) -> None:
    unreachable = f"{driver}://user:pw@127.0.0.1:1/nowhere"
    completed = await _alembic(unreachable, "-c", str(project), "upgrade", "head", "--sql")

    assert completed.returncode == 0, completed.stderr
    for revision in revision_ids(REVISIONS):
        assert f"CREATE TABLE mig_{revision[1:]}" in completed.stdout
    assert "INSERT INTO alembic_version (version_num) VALUES ('r01')" in completed.stdout


async def test_autogenerate_from_the_command_line_batches_alterations_on_sqlite_only(
    url: str, tmp_path: Path, backend: str
) -> None:
    project = write_project(tmp_path / "one", 1)
    (project.parent / "env.py").write_text(
        "import sqlalchemy as sa\n"
        "from fastapi_asyncdb.migrations import run_migrations\n"
        "metadata = sa.MetaData()\n"
        "sa.Table('mig_01', metadata, sa.Column('id', sa.Integer, primary_key=True),"
        " sa.Column('label', sa.String(20)))\n"
        "run_migrations(metadata)\n"
    )
    async with Database(url=url) as database:
        await database.migrate(project)
    completed = await _alembic(url, "-c", str(project), "revision", "--autogenerate", "-m", "x")

    assert completed.returncode == 0, completed.stderr
    [generated] = [
        path for path in (project.parent / "versions").glob("*.py") if path.stem[:1] != "r"
    ]
    script = generated.read_text()
    if backend == "sqlite":
        assert "with op.batch_alter_table('mig_01', schema=None) as batch_op:" in script
        assert "batch_op.add_column(sa.Column('label'" in script
    else:
        assert "batch_alter_table" not in script
        assert "op.add_column('mig_01', sa.Column('label'" in script


def test_lock_names_differ_by_database_and_fit_every_backend() -> None:
    names = {
        lock_name(make_url(f"postgresql+asyncpg://h/{database}"))
        for database in ("app", "app2", "x" * 64, "App")
    }
    assert len(names) == 4
    assert all(len(name) <= 64 for name in names)  # MySQL's limit on GET_LOCK names
    keys = {advisory_lock_key(name) for name in names}
    assert len(keys) == 4
    assert all(-(2**63) <= key < 2**63 for key in keys)


def _environment(url: str) -> dict[str, str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if name != "DATABASE_URL" and not name.startswith("DB_")
    }
    environment["DATABASE_URL"] = url
    environment["PYTHONPATH"] = str(ROOT)
    return environment


async def _alembic(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await _run(url, "alembic", *args)


async def _run(url: str, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        env=_environment(url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return subprocess.CompletedProcess(args, process.returncode, stdout.decode(), stderr.decode())


# The online part of Alembic's generic env.py template: it connects with alembic.ini's
# sqlalchemy.url, ignoring the connection handed over.
GENERIC_ENV = """\
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
connectable = engine_from_config(
    config.get_section(config.config_ini_section, {}),
    prefix="sqlalchemy.",
    poolclass=pool.NullPool,
)
with connectable.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
"""

# An env.py with its own engine on some other database.
OWN_ENGINE_ENV = """\
from alembic import context
from sqlalchemy import create_engine

with create_engine({url!r}).connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
"""


async def test_an_env_py_connecting_with_the_ini_url_fails_before_migrating_elsewhere(
    url: str, project: Path, tmp_path: Path
) -> None:
    elsewhere = _use_the_ini_url(project, tmp_path / "elsewhere.db")
    async with Database(url=url) as database:
        with pytest.raises(MigrationError, match=r"did not use the connection.*run_migrations"):
            await database.migrate(project)
    assert not elsewhere.exists() or elsewhere.stat().st_size == 0
    assert await project_tables(url) == (set(), [])


async def test_an_env_py_migrating_another_database_fails_instead_of_nothing_to_apply(
    url: str, project: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere.db"
    (project.parent / "env.py").write_text(OWN_ENGINE_ENV.format(url=f"sqlite:///{elsewhere}"))
    async with Database(url=url) as database:
        with pytest.raises(MigrationError, match=r"is at \(none\), not at r04.*did not use"):
            await database.migrate(project)
    assert await project_tables(url) == (set(), [])


async def test_the_migrate_command_exits_non_zero_when_env_py_ignores_the_connection(
    url: str, project: Path, tmp_path: Path
) -> None:
    _use_the_ini_url(project, tmp_path / "elsewhere.db")
    done = await _run(url, "fastapi_asyncdb.cli", "migrate", "--config", str(project))
    assert done.returncode != 0
    assert "did not use the connection" in done.stderr
    assert "nothing to apply" not in done.stdout
    password = make_url(url).password
    assert not password or password not in done.stdout + done.stderr


async def test_relative_upgrades_and_downgrades_move_by_the_steps_asked(
    url: str, project: Path
) -> None:
    every = revision_ids(REVISIONS)
    async with Database(url=url) as database:
        await database.migrate(project, "+1")
        assert (await project_tables(url))[1] == every[:1]
        await database.migrate(project, "+2")
        assert (await project_tables(url))[1] == every[2:3]
        await downgrade(database.engine, database.backend, project, "-1")
        assert (await project_tables(url))[1] == every[1:2]
        await downgrade(database.engine, database.backend, project, "base")
    assert await project_tables(url) == (set(), [])


async def test_a_relative_upgrade_by_an_env_py_migrating_elsewhere_fails_each_time(
    url: str, project: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere.db"
    (project.parent / "env.py").write_text(OWN_ENGINE_ENV.format(url=f"sqlite:///{elsewhere}"))
    async with Database(url=url) as database:
        for _ in range(2):
            with pytest.raises(MigrationError, match=r"is at \(none\), not at r01.*run_migrations"):
                await database.migrate(project, "+1")
    assert await project_tables(url) == (set(), [])


@pytest.mark.parametrize(("revision", "wanted"), [("-1", "at r03"), ("base", r"at \(none\)")])
async def test_a_downgrade_by_an_env_py_migrating_elsewhere_fails_and_changes_nothing(
    url: str, project: Path, tmp_path: Path, revision: str, wanted: str
) -> None:
    elsewhere = tmp_path / "elsewhere.db"
    async with Database(url=f"sqlite+aiosqlite:///{elsewhere}") as other:
        await other.migrate(project)  # so that the rogue env.py has something to undo
    async with Database(url=url) as database:
        await database.migrate(project)
        before = await project_tables(url)
        (project.parent / "env.py").write_text(OWN_ENGINE_ENV.format(url=f"sqlite:///{elsewhere}"))
        with pytest.raises(MigrationError, match=rf"is at r04, not {wanted}.*connection"):
            await downgrade(database.engine, database.backend, project, revision)
    assert await project_tables(url) == before


def _use_the_ini_url(project: Path, elsewhere: Path) -> Path:
    """Give the project Alembic's generic env.py and an ini URL to ``elsewhere``."""
    project.write_text(project.read_text() + f"sqlalchemy.url = sqlite:///{elsewhere}\n")
    (project.parent / "env.py").write_text(GENERIC_ENV)
    return elsewhere
