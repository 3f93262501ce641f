"""Tests per second of a suite of small tests, isolated by rollback or by recreating tables.

    python -m tests.fastapi_asyncdb.testing.measure [--tests 200] [--rounds 3] [--url URL]

Writes a suite of ``--tests`` tests (each writes three notes through the app and reads
them back) into a temporary directory and runs it three ways on the server of ``--url``
(PostgreSQL by default): with the plugin's rollback isolation, with every table dropped
and created again before each test instead, and with the plugin under ``-n 2``, the
three ways in turn for ``--rounds`` rounds (the machine may be shared: the best round
is the one least disturbed). Prints pytest's own session time (interpreter start
excluded) and tests per second, best and median.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPOSITORY = Path(__file__).parents[3]
APP = "tests.fastapi_asyncdb.testing.notes_app"

SUITE = """
import pytest

@pytest.mark.parametrize("number", range({tests}))
async def test_three_notes_are_written_and_read_back(number, client):
    for body in ("a", "b", "c"):
        assert (await client.post("/notes", json={{"body": body}})).status_code == 201
    assert [note["body"] for note in (await client.get("/notes")).json()] == ["a", "b", "c"]
"""

# Isolation replaced by what suites without it do: recreate the tables before each test.
RECREATE_TABLES = f"""
import pytest_asyncio
from {APP} import Base

@pytest_asyncio.fixture(loop_scope="session")
async def asyncdb_isolation(asyncdb_running_app):
    database = asyncdb_running_app.database
    async with database.engine.begin() as connection:
        await connection.run_sync(Base.metadata.drop_all)
        await connection.run_sync(Base.metadata.create_all)
    async with database.engine.connect() as connection:
        yield connection
"""

INI = f"""[pytest]
addopts = -p no:cacheprovider -q
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings = error
asyncdb_app = {APP}:app
asyncdb_schema = metadata:{APP}:Base.metadata
"""


def run(directory: Path, url: str, *arguments: str) -> tuple[int, float]:
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", f"--asyncdb-url={url}", *arguments],
        cwd=directory,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    summary = re.search(r"(\d+) passed in ([\d.]+)s", completed.stdout)
    if completed.returncode != 0 or summary is None:
        raise SystemExit(completed.stdout[-3000:] + completed.stderr[-3000:])
    return int(summary.group(1)), float(summary.group(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    options = parser.parse_args()
    ways = {
        "rollback isolation (the plugin)": ("", ()),
        "drop_all/create_all per test": (RECREATE_TABLES, ()),
        "rollback isolation, -n 2": ("", ("-n", "2", "-p", "xdist")),
    }
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(options.rounds):
        for name, (conftest, arguments) in ways.items():
            with tempfile.TemporaryDirectory() as temporary:
                directory = Path(temporary)
                (directory / "pytest.ini").write_text(INI)
                (directory / "conftest.py").write_text(conftest)
                (directory / "test_suite.py").write_text(SUITE.format(tests=options.tests))
                passed, taken = run(directory, options.url, *arguments)
            assert passed == options.tests
            seconds[name].append(taken)
    print(f"{options.tests} tests, {options.rounds} rounds; load average {os.getloadavg()[0]:.1f}")
    for name, runs in seconds.items():
        best, median = min(runs), statistics.median(runs)
        print(
            f"{name:34} best {best:6.2f} s ({options.tests / best:5.1f} tests/s), "
            f"median {median:6.2f} s ({options.tests / median:5.1f} tests/s)"
        )


if __name__ == "__main__":
    main()
