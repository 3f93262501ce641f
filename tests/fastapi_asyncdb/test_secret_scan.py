"""The secret scan: every error kind, through every path, on every backend, leaks nothing.

The cases are generated: each kind of failure in ``secret_scan_cases.KINDS`` (constraint
violations, bad casts and JSON, a parameter of the wrong type, a write on the read
path, a statement timeout, a cut connection, a deadlock, a failed connect) crossed
with each path that can run it (``Database.transaction()``, ``read_session()``,
``Prepared`` on ``read_connection()``, ``run_statement()``, and an app with
``db.install(app)`` served over ``httpx.ASGITransport``), on SQLite, PostgreSQL and
MariaDB, once with ``echo`` and ``echo_pool`` on and once with them off but
SQLAlchemy's loggers at DEBUG (which logs rows, and lets ``Prepared`` and
``run_statement`` take the driver's own path). Every log record of every logger at
DEBUG, formatted with its traceback, every exception's ``str``, ``repr``,
attributes and ``traceback.format_exception``, every HTTP answer and the library's
reprs are searched for any four consecutive characters of the secret (see
``secret_scan`` for why that is safe from false alarms).

The companion test runs cases with the library's redaction switched off and shows
that the same scan then finds the secret: it would catch a regression.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastapi_asyncdb import redaction

from .secret_scan_cases import KINDS, KINDS_BY_NAME, PATHS, statement_for
from .secret_scan_run import MariaDBUser, scan

pytestmark = pytest.mark.usefixtures("clean_environment")

# A case that hangs fails with the place it hung instead of stalling the suite.
CASE_TIMEOUT = 60


def _cases() -> Iterator[Any]:
    for backend in ("sqlite", "postgresql", "mysql"):
        for kind in KINDS:
            if backend not in kind.backends:
                continue
            for path in PATHS:
                if statement_for(kind, path, backend) is None:
                    continue
                for echo in (True, False):
                    mode = "echo" if echo else "debug"
                    yield pytest.param(
                        backend, kind.name, path, echo, id=f"{backend}-{kind.name}-{path}-{mode}"
                    )


CASES = list(_cases())


@pytest.fixture(scope="module")
def mariadb_user() -> Iterator[MariaDBUser]:
    user = MariaDBUser()
    yield user
    asyncio.run(user.drop())


@pytest.mark.parametrize(("backend", "kind_name", "path", "echo"), CASES)
async def test_no_secret_reaches_logs_exceptions_reprs_or_http_answers(
    backend: str,
    kind_name: str,
    path: str,
    echo: bool,
    database_url: str,
    tmp_path: Path,
    mariadb_user: MariaDBUser,
) -> None:
    kind = KINDS_BY_NAME[kind_name]
    async with asyncio.timeout(CASE_TIMEOUT) as deadline:
        outcome = await scan(
            backend,
            kind,
            path,
            echo=echo,
            database_url=database_url,
            tmp_path=tmp_path,
            mariadb_user=mariadb_user,
        )
    # A cancellation swallowed on the way (the breaker's probe) would hide a hang.
    assert not deadline.expired()
    planned = statement_for(kind, path, backend)
    assert planned is not None
    # The case did what it is named after: the failure happened (or, for reads and
    # casts that a backend accepts, did not), and produced text to search.
    assert outcome.failed == kind.fails(backend, planned[1]), outcome.evidence.texts[-5:]
    assert outcome.evidence.texts
    assert outcome.leaks == [], "\n".join(outcome.leaks)


# Cases where, without the library's redaction, the secret reaches text: the server's
# DETAIL and CONTEXT in the exception chain (PostgreSQL), the value quoted in the
# message (PostgreSQL's cast, asyncpg's argument repr and its cause), the duplicate
# entry cut to 64 characters and the server's warnings (MariaDB), rows that
# SQLAlchemy logs at DEBUG, and the calls aiosqlite logs at DEBUG with their
# arguments. The HTTP case leaks through the error handler's log record (conflicts
# log their class only, so a constraint violation over HTTP leaked nowhere).
LEAKING_WITHOUT_REDACTION = [
    ("postgresql", "unique_violation", "transaction", True),
    ("postgresql", "check_violation", "run_statement", False),
    ("postgresql", "bad_cast", "read_session", True),
    ("postgresql", "bad_json", "prepared", False),
    ("postgresql", "bad_json", "http", True),
    ("postgresql", "wrong_parameter_type", "prepared", False),
    ("postgresql", "read_row", "read_session", False),
    ("postgresql", "parsed_value", "read_session", True),
    ("postgresql", "raised_by_trigger", "transaction", False),
    ("mysql", "unique_violation", "transaction", True),
    ("mysql", "bad_cast", "read_session", True),
    ("mysql", "read_row", "prepared", False),
    ("mysql", "raised_by_trigger", "run_statement", True),
    ("sqlite", "unique_violation", "transaction", False),
    ("sqlite", "read_row", "read_session", False),
]


@pytest.mark.parametrize(("backend", "kind_name", "path", "echo"), LEAKING_WITHOUT_REDACTION)
async def test_the_scan_finds_the_secret_when_redaction_is_off(
    backend: str,
    kind_name: str,
    path: str,
    echo: bool,
    database_url: str,
    tmp_path: Path,
    mariadb_user: MariaDBUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redaction, "install_parameter_redaction", lambda _engine: None)
    redaction.remove_log_filters()
    outcome = await scan(
        backend,
        KINDS_BY_NAME[kind_name],
        path,
        echo=echo,
        database_url=database_url,
        tmp_path=tmp_path,
        mariadb_user=mariadb_user,
    )
    assert outcome.leaks, "the scan found nothing with redaction off"
    if (backend, kind_name) == ("mysql", "unique_violation"):
        # MariaDB cut the value: the whole secret is nowhere, yet the scan saw it.
        whole = [where for where, text in outcome.evidence.texts if outcome.secret in text]
        assert not whole
