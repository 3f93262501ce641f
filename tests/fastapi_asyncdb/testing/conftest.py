"""Run a user's test suite, written to a temporary directory, with the plugin as installed.

``user_suite`` writes the pytest configuration a user would (the app by import path,
the schema from its metadata, ``--asyncdb-url`` naming this run's server database) and
runs pytest on it in-process, or in a subprocess for pytest-xdist.
"""

from __future__ import annotations

import gc
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

# The drivers (and Hypothesis, whose pytest plugin imports it at the end of the outer
# run), imported here once: pytester forgets the modules a run imported when the run
# ends, and importing them a second time can crash the process (an extension module)
# or trip CPython 3.11's "AST constructor recursion depth mismatch" (Hypothesis).
import aiosqlite  # noqa: F401
import asyncmy  # noqa: F401
import asyncpg  # noqa: F401
import hypothesis.internal.observability  # noqa: F401
import pytest
import sqlalchemy.dialects.mysql.asyncmy
import sqlalchemy.dialects.postgresql.asyncpg
import sqlalchemy.dialects.sqlite.aiosqlite  # noqa: F401

from tests.conftest import prepare_server

APP_MODULE = "tests.fastapi_asyncdb.testing.notes_app"
REPOSITORY = Path(__file__).parents[3]


@dataclass
class UserSuite:
    pytester: pytest.Pytester
    backend: str
    base_url: str | None  # None: the plugin's default, SQLite in pytest's temporary directory
    ini: dict[str, str | None] = field(default_factory=dict)

    def write_ini(self) -> None:
        settings = {
            "addopts": "--strict-markers --strict-config -p no:cacheprovider",
            "asyncio_mode": "auto",
            "asyncio_default_fixture_loop_scope": "function",
            "filterwarnings": "error",
            "asyncdb_app": f"{APP_MODULE}:app",
            "asyncdb_schema": f"metadata:{APP_MODULE}:Base.metadata",
            **self.ini,
        }
        lines = [f"{key} = {value}" for key, value in settings.items() if value is not None]
        self.pytester.makeini("\n".join(["[pytest]", *lines]) + "\n")
        # A fresh app for each run, as in a user's suite: pytester forgets the module a
        # run imported, but its package keeps it as an attribute.
        package, _, name = APP_MODULE.rpartition(".")
        sys.modules.pop(APP_MODULE, None)
        if package in sys.modules and hasattr(sys.modules[package], name):
            delattr(sys.modules[package], name)

    def _arguments(self, arguments: tuple[str, ...]) -> list[str]:
        url = [f"--asyncdb-url={self.base_url}"] if self.base_url else []
        # Schemathesis (installed for the ledger's tests, not a user's) imports a module at
        # the end of every session; in an in-process run that import's assertion
        # rewriting can meet a CPython 3.11 bug ("AST constructor recursion depth
        # mismatch") and lose the summary line.
        return ["-p", "no:schemathesis", *url, *arguments]

    def run(self, *arguments: str) -> pytest.RunResult:
        self.write_ini()
        _collect_earlier_tests_garbage()
        return self.pytester.runpytest_inprocess(*self._arguments(arguments))

    def run_inline(self, *arguments: str) -> pytest.HookRecorder:
        self.write_ini()
        _collect_earlier_tests_garbage()
        return self.pytester.inline_run(*self._arguments(arguments))

    def run_in_subprocess(self, *arguments: str, timeout: float = 300) -> pytest.RunResult:
        self.write_ini()
        return self.pytester.runpytest_subprocess(*self._arguments(arguments), timeout=timeout)


def _collect_earlier_tests_garbage() -> None:
    # An in-process run shares this interpreter's garbage collector: a connection an
    # earlier test of this suite left to it would be finalized, with its ResourceWarning,
    # inside the user's suite, and fail a test there that has nothing to do with it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture
def user_suite(
    pytester: pytest.Pytester, backend: str, monkeypatch: pytest.MonkeyPatch
) -> UserSuite:
    for name in list(os.environ):
        if name in ("DATABASE_URL", "TEST_DATABASE_URL") or name.startswith("DB_"):
            monkeypatch.delenv(name)
    # The app is imported from the repository, in this process and in subprocesses.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    )
    base_url = None if backend == "sqlite" else prepare_server(backend)
    return UserSuite(pytester, backend, base_url)
