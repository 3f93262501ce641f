"""The doctor checks the app's settings against the live server and says what to change."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from fastapi_asyncdb import Database
from fastapi_asyncdb.doctor import Finding, examine, render

from .proxy import free_port

pytestmark = pytest.mark.usefixtures("clean_environment")


def by_check(findings: list[Finding], check: str) -> list[Finding]:
    return [finding for finding in findings if finding.check == check]


async def test_a_healthy_configuration_reports_the_server_and_no_error(
    database_url: str, backend: str
) -> None:
    findings = await examine(Database(url=database_url), workers=1)
    assert [finding.level for finding in by_check(findings, "reachable")] == ["ok"]
    assert (
        by_check(findings, "server")[0]
        .message.lower()
        .startswith({"sqlite": "sqlite", "postgresql": "postgresql", "mysql": "mariadb"}[backend])
    )
    assert not [finding for finding in findings if finding.level == "error"]
    assert render(findings).endswith("0 error(s), " + render(findings).split(", ")[-1])


@pytest.mark.backends("postgresql", "mysql")
async def test_the_server_side_timeouts_in_force_are_read_back(database_url: str) -> None:
    findings = await examine(Database(url=database_url, statement_timeout=7), workers=1)
    messages = [finding.message for finding in by_check(findings, "timeouts")]
    assert "statement_timeout 7 s in force" in messages


@pytest.mark.backends("postgresql", "mysql")
async def test_more_connections_than_the_server_allows_is_an_error_with_the_arithmetic(
    database_url: str,
) -> None:
    database = Database(url=database_url, pool_size=100, max_overflow=100)
    findings = await examine(database, workers=8)
    (budget,) = by_check(findings, "connections")
    assert budget.level == "error"
    assert "8 workers x (100 + 100 write + 100 + 100 read + 1 probe) = 3208" in budget.message
    assert "max_connections" in budget.advice


async def test_an_unreachable_server_is_an_error_without_the_password(
    database_url: str, backend: str, tmp_path: Path
) -> None:
    if backend == "sqlite":
        (tmp_path / "a-file").write_text("not a directory")
        url = f"sqlite+aiosqlite:///{tmp_path / 'a-file' / 'app.db'}"
    else:
        unreachable = make_url(database_url).set(password="s3cret-pw", port=free_port())
        url = unreachable.render_as_string(hide_password=False)
    findings = await examine(Database(url=url, connect_timeout=1), workers=1)
    report = render(findings)
    assert findings[0].level == "error"
    assert "s3cret-pw" not in report
    assert report.endswith("1 error(s), 0 warning(s)")


@pytest.fixture
async def unprivileged_url(database_url: str) -> AsyncIterator[str]:
    """A PostgreSQL role that can log in and use the database, nothing more."""
    async with Database(url=database_url) as database, database.engine.begin() as connection:
        await connection.execute(text("DROP ROLE IF EXISTS doctor_app"))
        await connection.execute(text("CREATE ROLE doctor_app LOGIN"))
    yield make_url(database_url).set(username="doctor_app").render_as_string(False)
    async with Database(url=database_url) as database, database.engine.begin() as connection:
        await connection.execute(text("DROP ROLE doctor_app"))


@pytest.mark.backends("postgresql")
async def test_a_superuser_is_warned_and_an_unprivileged_role_is_not(
    database_url: str, unprivileged_url: str
) -> None:
    as_superuser = await examine(Database(url=database_url), workers=1)
    assert any("superuser" in finding.message for finding in as_superuser)
    as_app = await examine(Database(url=unprivileged_url), workers=1)
    assert [finding.level for finding in by_check(as_app, "privileges")] == ["ok"]


@pytest.mark.backends("postgresql")
async def test_a_role_that_owns_the_schema_it_works_in_is_warned(database_url: str) -> None:
    # Roles belong to the whole server: the name carries the run's process id.
    role, schema = f"doctor_owner_{os.getpid()}", f"doctor_owned_{os.getpid()}"
    async with Database(url=database_url) as database, database.engine.begin() as connection:
        await connection.execute(text(f"CREATE ROLE {role} LOGIN"))
        await connection.execute(text(f"CREATE SCHEMA {schema} AUTHORIZATION {role}"))
        await connection.execute(text(f"ALTER ROLE {role} SET search_path = {schema}"))
    try:
        owner_url = make_url(database_url).set(username=role).render_as_string(False)
        findings = by_check(await examine(Database(url=owner_url), workers=1), "privileges")
        assert [finding.level for finding in findings] == ["warning"]
        assert "owns its schema" in findings[0].message
    finally:
        async with Database(url=database_url) as database, database.engine.begin() as connection:
            await connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
            await connection.execute(text(f"DROP ROLE {role}"))


@pytest.mark.backends("postgresql")
async def test_the_fast_path_is_reported_available_on_asyncpg(database_url: str) -> None:
    findings = await examine(Database(url=database_url), workers=1)
    (fast_path,) = by_check(findings, "fast path")
    assert fast_path.level == "ok"
    assert "driver directly" in fast_path.message


@pytest.mark.backends("mysql")
async def test_a_mariadb_superuser_is_warned_and_a_user_with_one_schemas_grants_is_not(
    database_url: str,
) -> None:
    # Users belong to the whole server: the name carries the run's process id.
    user, schema = f"doctor_app_{os.getpid()}", make_url(database_url).database
    as_root = by_check(await examine(Database(url=database_url), workers=1), "privileges")
    assert [finding.level for finding in as_root] == ["warning"]
    assert "superuser" in as_root[0].message
    async with Database(url=database_url) as database, database.engine.begin() as connection:
        await connection.execute(text(f"CREATE USER '{user}'@'%'"))
        await connection.execute(
            text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{schema}`.* TO '{user}'@'%'")
        )
    try:
        app_url = make_url(database_url).set(username=user).render_as_string(False)
        as_app = by_check(await examine(Database(url=app_url), workers=1), "privileges")
        assert [finding.level for finding in as_app] == ["ok"]
    finally:
        async with Database(url=database_url) as database, database.engine.begin() as connection:
            await connection.execute(text(f"DROP USER '{user}'@'%'"))
