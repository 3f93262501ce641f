"""The ledger's server refuses to start when its workers' pools cannot fit in PostgreSQL.

``WEB_CONCURRENCY=2``, as a platform sets it, gives the server its two workers and the
library its ``DB_WORKERS``; pools of 60 (+5) then need 2 x 131 = 262 connections, more
than the test server allows. Each worker refuses at startup: the server stops, with
the arithmetic on stderr in one line and no traceback.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

import pytest

from tests.conftest import prepare_server
from tests.fastapi_asyncdb.served import REPOSITORY, server_environment
from tests.servers.processes import free_port

pytestmark = [pytest.mark.usefixtures("clean_environment")]

APP = "ledger.app:create_app"
TOO_LARGE = {"DB_POOL_SIZE": 60, "LEDGER_MIGRATE_ON_STARTUP": "false", "WEB_CONCURRENCY": 2}
ARITHMETIC = "2 workers x (60 + 5 write + 60 + 5 read + 1 probe) = 262 connections"
SERVERS: dict[str, tuple[Sequence[str], int | None]] = {
    # The worker count from WEB_CONCURRENCY, as each server reads it itself.
    "gunicorn -k UvicornWorker": (
        ["-m", "gunicorn", "--worker-class", "uvicorn_worker.UvicornWorker", f"{APP}()"],
        3,
    ),
    # uvicorn's supervisor stops when a worker fails to start, but exits with status 0
    # (uvicorn 0.54): its status says nothing here, its log does.
    "uvicorn": (["-m", "uvicorn", "--factory", APP], None),
}


@pytest.mark.parametrize("server", list(SERVERS))
def test_a_server_whose_workers_cannot_fit_stops_with_the_arithmetic_on_stderr(
    server: str,
) -> None:
    url = prepare_server("postgresql", "ledger_budget")
    arguments, exit_status = SERVERS[server]
    port = free_port()
    bind = ["--bind", f"127.0.0.1:{port}"] if "gunicorn" in arguments else ["--port", str(port)]
    finished = subprocess.run(
        [sys.executable, *arguments, *bind],
        env=server_environment(url, **TOO_LARGE),
        cwd=REPOSITORY,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    refusals = [line for line in finished.stderr.splitlines() if ARITHMETIC in line]
    assert len(refusals) == 2, finished.stderr  # one per worker
    assert "the server allows" in refusals[0]
    assert "DB_WORKERS" in refusals[0]
    # The refusal is one line, never a traceback through our code; gunicorn's arbiter may
    # print a HaltServer traceback of its own when both workers fail to boot at once.
    frames = [line for line in finished.stderr.splitlines() if line.lstrip().startswith("File ")]
    assert not [frame for frame in frames if "fastapi_asyncdb" in frame or "ledger" in frame]
    if exit_status is not None:
        assert finished.returncode == exit_status
