"""The ``fastapi-asyncdb`` command, run as users run it: the console script, in a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import URL, make_url

from fastapi_asyncdb import Database
from fastapi_asyncdb.cli import build_parser, run_command
from fastapi_asyncdb.migrations import migration_lock

from .migration_project import (
    drop_project_tables,
    project_tables,
    revision_ids,
    wait_until,
    write_project,
)

pytestmark = pytest.mark.usefixtures("clean_environment")

REVISIONS = 3
COMMAND = str(Path(sys.executable).with_name("fastapi-asyncdb"))
UNREACHABLE = "postgresql+asyncpg://someone:pw-3f9a1c@127.0.0.1:1/nowhere"
LEDGER_INI = Path(__file__).resolve().parents[2] / "ledger" / "migrations" / "alembic.ini"


@dataclass
class Ran:
    status: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
async def url(database_url: str) -> AsyncIterator[str]:
    await drop_project_tables(database_url)
    yield database_url
    await drop_project_tables(database_url)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "project", REVISIONS)


def environment(database_url: str, **extra: str) -> dict[str, str]:
    """This process's environment with none of the database settings but ``database_url``."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name != "DATABASE_URL" and not name.startswith("DB_")
    }
    return {**inherited, "DATABASE_URL": database_url, **extra}


async def run(
    *args: str, env: dict[str, str], cwd: Path | None = None, executable: str = COMMAND
) -> Ran:
    process = await start(*args, env=env, cwd=cwd, executable=executable)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return Ran(process.returncode, stdout.decode(), stderr.decode())


async def start(
    *args: str, env: dict[str, str], cwd: Path | None = None, executable: str = COMMAND
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        executable,
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def assert_one_line_failure(ran: Ran, message: str) -> None:
    assert ran.status == 1, ran.output
    assert "Traceback" not in ran.output
    errors = [line for line in ran.stderr.splitlines() if "error:" in line]
    assert errors == [line for line in errors if line.startswith("fastapi-asyncdb migrate: error:")]
    assert len(errors) == 1, ran.stderr
    assert message in errors[0]


async def test_migrate_upgrades_then_says_there_is_nothing_to_apply(
    url: str, project: Path
) -> None:
    first = await run("migrate", "--config", str(project), env=environment(url))
    second = await run("migrate", "--config", str(project), env=environment(url))

    every = revision_ids(REVISIONS)
    assert first.status == 0, first.output
    assert f"upgraded from (none) to {every[-1]} (applied {', '.join(every)})" in first.stdout
    assert "Running upgrade  -> r01" in first.stderr
    assert second.status == 0, second.output
    assert f"already at {every[-1]}; nothing to apply" in second.stdout
    assert "Running upgrade" not in second.stderr
    assert (await project_tables(url))[1] == [every[-1]]


async def test_check_exits_3_while_the_schema_is_behind_and_0_at_head(
    url: str, project: Path
) -> None:
    env = environment(url)
    behind = await run("migrate", "--check", "--config", str(project), env=env)
    async with Database(url=url) as database:
        await database.migrate(project, "r01")
        still_behind = await run("migrate", "--check", "--config", str(project), env=env)
        await database.migrate(project)
    at_head = await run("migrate", "--check", "--config", str(project), env=env)

    assert behind.status == 3, behind.output
    assert "at (none), behind r03: 3 to apply (r01, r02, r03)" in behind.stdout
    assert still_behind.status == 3, still_behind.output
    assert "at r01, behind r03: 2 to apply (r02, r03)" in still_behind.stdout
    assert at_head.status == 0, at_head.output
    assert "at r03; heads r03" in at_head.stdout


async def test_two_processes_migrating_at_once_take_turns(
    url: str, project: Path, tmp_path: Path
) -> None:
    log, release = tmp_path / "log", tmp_path / "release"
    env = environment(url, MIGRATION_LOG=str(log), MIGRATION_RELEASE=str(release))
    first = await start("migrate", "--config", str(project), env=env)
    second: asyncio.subprocess.Process | None = None
    try:
        await wait_until(lambda: log.exists() and "start r01" in log.read_text())
        second = await start("migrate", "--config", str(project), env=env)
        assert second.stderr is not None
        waiting = await asyncio.wait_for(
            read_until(second.stderr, "another process is migrating this database"), 60
        )
        assert log.read_text().count("start") == 1  # the second waits without migrating
        release.touch()
        first_out, first_err = await asyncio.wait_for(first.communicate(), 60)
        second_out, second_err = await asyncio.wait_for(second.communicate(), 60)
    finally:
        for process in (first, second):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()

    assert first.returncode == 0, first_err.decode()
    assert second.returncode == 0, waiting + second_err.decode()
    assert "applied r01, r02, r03" in first_out.decode()
    assert "already at r03; nothing to apply" in second_out.decode()
    events = [line.split() for line in log.read_text().splitlines()]
    assert [(event, revision) for event, revision, _ in events] == [
        (event, revision) for revision in revision_ids(REVISIONS) for event in ("start", "end")
    ]
    assert {pid for _, _, pid in events} == {str(first.pid)}


async def test_lock_not_obtained_fails_in_one_line(url: str, project: Path) -> None:
    async with Database(url=url) as holder, migration_lock(holder.engine, holder.backend):
        ran = await run(
            *("migrate", "--lock-timeout", "0.5", "--config", str(project)),
            env=environment(url),
        )

    assert_one_line_failure(ran, "the migration lock was not obtained within 0.5 s")
    assert await project_tables(url) == (set(), [])


async def test_a_failing_migration_fails_in_one_line(url: str, tmp_path: Path) -> None:
    failing = write_project(tmp_path / "failing", REVISIONS, failing="r02")
    ran = await run("migrate", "--config", str(failing), env=environment(url))

    assert_one_line_failure(ran, "the database refused")
    assert "no_such_table" in ran.stderr


@pytest.mark.parametrize(
    "unreachable",
    [UNREACHABLE, "mysql+asyncmy://someone:pw-3f9a1c@127.0.0.1:1/nowhere"],
    ids=["postgresql", "mysql"],
)
async def test_unreachable_database_fails_in_one_line_without_its_password(
    project: Path, unreachable: str
) -> None:
    ran = await run("migrate", "--config", str(project), env=environment(unreachable))

    assert_one_line_failure(ran, "cannot connect to the database")
    assert "pw-3f9a1c" not in ran.output
    assert "someone:***@127.0.0.1:1/nowhere" in ran.output


@pytest.mark.backends("postgresql", "mysql")
async def test_password_of_the_database_url_never_appears_in_the_output(
    url: str, project: Path
) -> None:
    # The suite's servers trust local users; a password they ignore (PostgreSQL) or
    # refuse (MariaDB's root has none) is then still in the settings the command reads.
    secret = make_url(url).password or "pw-d41d8c"
    with_secret = make_url(url).set(password=secret).render_as_string(hide_password=False)
    ran = await run("migrate", "--config", str(project), env=environment(with_secret))

    assert ran.status == 0 or "cannot connect to the database" in ran.stderr, ran.output
    assert secret not in ran.output
    assert ":***@" in ran.output
    assert "Traceback" not in ran.output


@settings(max_examples=40, deadline=None)
@given(password=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=8))
def test_no_password_reaches_the_output_of_a_failed_command(password: str) -> None:
    url = URL.create("postgresql+asyncpg", "someone", password, "127.0.0.1", 1, "nowhere")
    stdout, stderr = io.StringIO(), io.StringIO()
    environment = {"DATABASE_URL": url.render_as_string(hide_password=False)}
    args = build_parser().parse_args(["migrate", "--config", str(LEDGER_INI)])
    with (
        mock.patch.dict(os.environ, environment),
        contextlib.redirect_stdout(stdout),
        contextlib.redirect_stderr(stderr),
    ):
        status = asyncio.run(run_command(args))

    output = stdout.getvalue() + stderr.getvalue()
    assert status == 1
    assert "cannot connect to the database" in output
    assert "someone:***@127.0.0.1:1/nowhere" in output
    for form in (password, quote(password, safe=""), quote_plus(password)):
        assert form not in output


async def test_sql_writes_the_upgrade_to_stdout_without_connecting(project: Path) -> None:
    ran = await run("migrate", "--sql", "--config", str(project), env=environment(UNREACHABLE))

    assert ran.status == 0, ran.output
    for revision in revision_ids(REVISIONS):
        assert f"CREATE TABLE mig_{revision[1:]}" in ran.stdout
    assert "UPDATE alembic_version SET version_num='r03'" in ran.stdout
    assert "someone:***@127.0.0.1:1/nowhere: SQL of the upgrade to head" in ran.stderr
    assert "pw-3f9a1c" not in ran.output


async def test_missing_alembic_ini_fails_in_one_line(tmp_path: Path) -> None:
    ran = await run("migrate", env=environment(UNREACHABLE), cwd=tmp_path)

    assert_one_line_failure(ran, "no Alembic configuration at alembic.ini")


async def test_without_alembic_the_command_names_the_extra_to_install(project: Path) -> None:
    code = (
        "import sys; sys.modules['alembic'] = None\n"
        "from fastapi_asyncdb.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    ran = await run(
        *("-c", code, "migrate", "--config", str(project)),
        env=environment(UNREACHABLE),
        executable=sys.executable,
    )

    assert_one_line_failure(ran, "pip install 'fastapi-asyncdb[migrations]'")


@pytest.mark.backends("sqlite", "postgresql")
async def test_app_and_database_options_use_the_apps_own_database_and_settings(
    url: str, project: Path, tmp_path: Path
) -> None:
    (tmp_path / "cliapp.py").write_text(
        "from fastapi import FastAPI\n"
        "from fastapi_asyncdb import Database, install\n"
        f"db = Database(url={url!r})\n"
        "app = FastAPI()\n"
        "install(app, db)\n"
    )
    # The environment names an unreachable database: only the app's own settings work.
    env = environment(UNREACHABLE)
    with_app = await run(
        "migrate", "--app", "cliapp:app", "--config", str(project), env=env, cwd=tmp_path
    )
    with_database = await run(
        "migrate", "--database", "cliapp:db", "--config", str(project), env=env, cwd=tmp_path
    )

    assert with_app.status == 0, with_app.output
    assert "applied r01, r02, r03" in with_app.stdout
    assert with_database.status == 0, with_database.output
    assert "already at r03" in with_database.stdout


@pytest.mark.parametrize(
    ("option", "path", "message"),
    [
        ("--app", "no_such_module:app", "cannot import no_such_module"),
        ("--app", "cliapp:nothing", "cliapp has no attribute nothing"),
        ("--app", "cliapp", "is not an import path like myapp.main:app"),
        ("--app", "cliapp:db", "cliapp:db has no Database installed"),
        ("--database", "cliapp:app", "cliapp:app is a FastAPI, not a fastapi_asyncdb.Database"),
    ],
)
async def test_wrong_import_paths_fail_in_one_line(
    tmp_path: Path, project: Path, option: str, path: str, message: str
) -> None:
    (tmp_path / "cliapp.py").write_text(
        "from fastapi import FastAPI\n"
        "from fastapi_asyncdb import Database\n"
        "db = Database()\n"
        "app = FastAPI()\n"
    )
    ran = await run(
        "migrate",
        option,
        path,
        "--config",
        str(project),
        env=environment(UNREACHABLE),
        cwd=tmp_path,
    )

    assert_one_line_failure(ran, message)


async def read_until(stream: asyncio.StreamReader, text: str) -> str:
    seen = ""
    while text not in seen:
        line = await stream.readline()
        assert line, f"ended before {text!r}:\n{seen}"
        seen += line.decode()
    return seen


async def test_doctor_reports_and_exits_zero_on_a_healthy_configuration(database_url: str) -> None:
    ran = await run("doctor", env=environment(database_url))
    assert ran.status == 0, ran.output
    assert "[ok  ] reachable" in ran.stdout
    assert ran.stdout.rstrip().splitlines()[-1].startswith("0 error(s)")


async def test_doctor_exits_one_on_an_error_and_prints_no_password(database_url: str) -> None:
    ran = await run("doctor", env=environment(UNREACHABLE, DB_CONNECT_TIMEOUT="1"))
    assert ran.status == 1, ran.output
    assert "[FAIL] reachable" in ran.stdout
    assert "pw-3f9a1c" not in ran.output
    assert "Traceback" not in ran.output


@pytest.mark.backends("postgresql", "mysql")
async def test_doctor_counts_connections_for_the_workers_it_is_told_of(database_url: str) -> None:
    ran = await run("doctor", "--workers", "1000", env=environment(database_url))
    assert ran.status == 1, ran.output
    assert "1000 workers x (10 + 5 write + 10 + 5 read + 1 probe) = 31000" in ran.stdout


@pytest.mark.backends("postgresql", "mysql")
@pytest.mark.parametrize("variable", ["DB_WORKERS", "WEB_CONCURRENCY"])
async def test_doctor_counts_the_workers_the_settings_name_by_default(
    database_url: str, variable: str
) -> None:
    ran = await run("doctor", env=environment(database_url, **{variable: "1000"}))
    assert ran.status == 1, ran.output
    assert "[FAIL] connections: 1000 workers x" in ran.stdout
