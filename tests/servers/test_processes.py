"""Server processes never outlive their test run, even one that is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from .processes import (
    STATE_ROOT,
    ServerProcess,
    ServerStartError,
    ServiceUser,
    _start_time,
    require_binary,
    run_directory,
    sweep_stale_runs,
)

_REPOSITORY = Path(__file__).resolve().parents[2]


def _gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _start_time(pid) is None or _zombie(pid):
            return True
        time.sleep(0.05)
    return False


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_server_dies_with_a_test_run_that_is_killed() -> None:
    # A run that starts a server and is then killed outright, with no teardown at all.
    script = textwrap.dedent(
        """
        import sys, time
        from tests.servers.processes import ServerProcess, ServiceUser
        server = ServerProcess("sleeper", ServiceUser.named("nobody"))
        server.start(["sleep", "300"], lambda: True)
        print(server.pid, flush=True)
        time.sleep(300)
        """
    )
    run = subprocess.Popen(
        [sys.executable, "-c", script], cwd=_REPOSITORY, stdout=subprocess.PIPE, text=True
    )
    assert run.stdout is not None
    server_pid = int(run.stdout.readline())
    run.stdout.close()
    assert _start_time(server_pid) is not None
    run.kill()
    run.wait()
    assert _gone(server_pid)
    left_behind = [path for path in STATE_ROOT.glob(f"run-{run.pid}-*")]
    assert left_behind
    sweep_stale_runs()
    assert not any(path.exists() for path in left_behind)


def test_next_run_kills_what_a_dead_run_left_and_removes_its_directory(tmp_path: Path) -> None:
    dead_owner = subprocess.Popen(["true"])
    dead_owner.wait()
    # A run whose process is gone, and a server of it that somehow survived.
    stale = tmp_path / f"run-{dead_owner.pid}-0"
    stale.mkdir()
    survivor = subprocess.Popen(["sleep", "300"], process_group=0)
    (stale / "server.process").write_text(f"{survivor.pid} {_start_time(survivor.pid)}\n")
    live = tmp_path / f"run-{os.getpid()}-{_start_time(os.getpid())}"
    live.mkdir()

    removed = sweep_stale_runs(tmp_path)

    assert removed == [stale]
    assert survivor.wait(timeout=10) == -signal.SIGKILL
    assert live.exists()
    assert not stale.exists()


def test_sweep_spares_a_process_whose_id_was_reused(tmp_path: Path) -> None:
    bystander = subprocess.Popen(["sleep", "300"], process_group=0)
    try:
        stale = tmp_path / "run-1-0"
        stale.mkdir()
        # The recorded start time is not the bystander's: same id, another process.
        (stale / "server.process").write_text(f"{bystander.pid} 1\n")
        sweep_stale_runs(tmp_path)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_server_that_exits_at_start_reports_its_log() -> None:
    server = ServerProcess("failing", ServiceUser.named("nobody"))
    try:
        with pytest.raises(ServerStartError, match="no such setting"):
            server.start(["sh", "-c", "echo 'no such setting' >&2; exit 3"], lambda: False)
        assert not server.running
    finally:
        server.remove()


def test_servers_start_only_from_the_main_thread() -> None:
    server = ServerProcess("threaded", ServiceUser.named("nobody"))
    errors: list[BaseException] = []

    def start() -> None:
        try:
            server.start(["sleep", "300"], lambda: True)
        except RuntimeError as error:
            errors.append(error)

    worker = threading.Thread(target=start)
    worker.start()
    worker.join()
    server.remove()
    assert [str(error) for error in errors] == ["start servers from the main thread"]


def test_stop_ends_the_whole_process_group() -> None:
    server = ServerProcess("group", ServiceUser.named("nobody"))
    server.start(["sh", "-c", "sleep 300 & echo $! > child.pid; wait"], lambda: True)
    child_file = server.directory / "child.pid"
    while not child_file.exists() or not child_file.read_text().strip():
        time.sleep(0.01)
    child = int(child_file.read_text())
    server.remove()
    assert _gone(child)
    assert run_directory().exists()


@pytest.mark.parametrize("ci", ["true", ""])
def test_a_missing_server_binary_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(expected, match="no-such-server is not installed"):
        require_binary("no-such-server")
