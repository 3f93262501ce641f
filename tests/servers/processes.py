"""Server processes owned by one test run, which never outlive it.

Every server runs in its own process group under ``setpriv``, which drops root to the
server's own system user (PostgreSQL, PgBouncer and MariaDB all refuse to run as root)
and sets a parent-death signal *after* the switch, so the kernel stops the server when
the test run dies, however it dies (a setuid in the server itself would clear it).

What a run starts lives under one run directory named after the run's process id and
start time. The next run removes the directories of runs that are gone and kills,
by the process id and start time recorded there, anything of theirs still running.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = [
    "ServerProcess",
    "ServerStartError",
    "free_port",
    "require_binary",
    "run_directory",
    "sweep_stale_runs",
]

STATE_ROOT = Path(tempfile.gettempdir()) / "fastapi-asyncdb-servers"
_RUN_PREFIX = "run-"
_PROCESS_SUFFIX = ".process"
_run_directory: Path | None = None
_run_lock = threading.Lock()


class ServerStartError(RuntimeError):
    """A server did not come up; the message carries the end of its log."""


def require_binary(name: str, *candidates: str) -> str:
    """The path of a server binary; a missing one fails in CI and skips elsewhere."""
    for candidate in (name, *candidates):
        found = shutil.which(candidate) or (candidate if os.access(candidate, os.X_OK) else None)
        if found:
            return found
    message = f"{name} is not installed (scripts/install-test-servers installs it)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI requires every test server", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    """A loopback TCP port nobody listens on now (another run may take it: retry on clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a process: with its id, names it even after id reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may contain spaces; fields after it are fixed.
    return stat.rsplit(")", 1)[1].split()[19]


def _command_name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _alive(pid: int, start_time: str) -> bool:
    return _start_time(pid) == start_time


def run_directory() -> Path:
    """This run's directory for servers; created on first use, after sweeping dead runs."""
    global _run_directory
    with _run_lock:
        if _run_directory is None:
            STATE_ROOT.mkdir(mode=0o755, exist_ok=True)
            # Service users must traverse it whatever the umask made of it.
            STATE_ROOT.chmod(0o1777)
            sweep_stale_runs()
            pid = os.getpid()
            directory = STATE_ROOT / f"{_RUN_PREFIX}{pid}-{_start_time(pid)}"
            directory.mkdir(mode=0o755, exist_ok=True)
            _run_directory = directory
        return _run_directory


def sweep_stale_runs(root: Path = STATE_ROOT) -> list[Path]:
    """Kill the servers of runs whose process is gone and remove their directories."""
    removed = []
    for directory in sorted(root.glob(f"{_RUN_PREFIX}*")):
        owner = directory.name.removeprefix(_RUN_PREFIX).split("-")
        if len(owner) == 2 and owner[0].isdigit() and _alive(int(owner[0]), owner[1]):
            continue
        for record in directory.glob(f"*{_PROCESS_SUFFIX}"):
            _kill_recorded(record)
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    return removed


def _kill_recorded(record: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        pid_text, start_time = record.read_text().split()
        pid = int(pid_text)
        if _alive(pid, start_time):
            os.killpg(pid, signal.SIGKILL)


@dataclass(frozen=True)
class ServiceUser:
    """Who a server runs as: its system user when we are root, else ourselves."""

    uid: int
    gid: int
    name: str

    @classmethod
    def named(cls, name: str) -> ServiceUser:
        entry = pwd.getpwnam(name) if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
        return cls(entry.pw_uid, entry.pw_gid, entry.pw_name)

    def own(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, self.uid, self.gid)


class ServerProcess:
    """One server process: started detached in its own group, stopped with its group."""

    def __init__(
        self,
        name: str,
        user: ServiceUser,
        *,
        stop_signal: signal.Signals = signal.SIGTERM,
        parent_death_signal: signal.Signals | None = None,
    ) -> None:
        self.name = name
        self.user = user
        self.stop_signal = stop_signal
        self.parent_death_signal = parent_death_signal or stop_signal
        self.directory = run_directory() / name
        self.directory.mkdir(mode=0o700)
        user.own(self.directory)
        self.log_path = self.directory / "server.log"
        self._record = self.directory.parent / f"{name}{_PROCESS_SUFFIX}"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, argv: Sequence[str], ready: Callable[[], bool], timeout: float = 30) -> float:
        """Run ``argv`` as the service user until ``ready()``; returns the seconds it took."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        if threading.current_thread() is not threading.main_thread():
            # The parent-death signal fires when the *thread* that forked the server ends.
            raise RuntimeError("start servers from the main thread")
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [*self._wrapper(), *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                process_group=0,
            )
        self._record.write_text(f"{self._process.pid} {_start_time(self._process.pid)}\n")
        # Until setpriv has exec'd the server, its death signal may not be set yet.
        while _command_name(self._process.pid) == "setpriv" and self._process.poll() is None:
            time.sleep(0.001)
        while not ready():
            if self._process.poll() is not None:
                self._forget()
                raise ServerStartError(f"{self.name} exited at start:\n{self.log_tail()}")
            if time.monotonic() - started > timeout:
                self.stop()
                raise ServerStartError(f"{self.name} not ready in {timeout} s:\n{self.log_tail()}")
            time.sleep(0.01)
        return time.monotonic() - started

    def _wrapper(self) -> list[str]:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            return []
        # setpriv sets the death signal after changing users, then execs the server.
        wrapper = [setpriv, f"--pdeathsig={self.parent_death_signal.name.removeprefix('SIG')}"]
        if os.geteuid() == 0:
            wrapper += [f"--reuid={self.user.uid}", f"--regid={self.user.gid}", "--clear-groups"]
        return [*wrapper, "--"]

    def signal(self, signum: signal.Signals) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signum)

    def stop(self, timeout: float = 10) -> None:
        """Stop the server with its own shutdown signal, then kill what is left of its group."""
        process = self._process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            if process.poll() is None:
                os.killpg(process.pid, self.stop_signal)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            # Children the leader left behind (a backend finishing) share its group.
            os.killpg(process.pid, signal.SIGKILL)
        self._forget()

    def _forget(self) -> None:
        self._process = None
        self._record.unlink(missing_ok=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def port_is_listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False
