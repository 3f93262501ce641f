"""Run wrk once and parse what it prints."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from typing import Final

WRK: Final = "wrk"
# wrk's own per-request timeout; a request past it is a "timeout" socket error.
REQUEST_TIMEOUT: Final = "10s"
_UNIT_TO_MS: Final = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


class WrkError(RuntimeError):
    pass


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise WrkError(f"unknown duration {text!r}")
    return float(match.group(1)) * _UNIT_TO_MS[match.group(2)]


def _seconds_of(text: str) -> float:
    return _duration_ms(text) / 1000.0


def parse(output: str) -> WrkResult:
    total = re.search(r"(\d+) requests in ([\d.]+\w+),", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)\s*$", output, re.MULTILINE))
    if total is None or rate is None or set(percentiles) != {"50", "99"}:
        raise WrkError(f"cannot parse wrk output:\n{output}")
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests=int(total.group(1)),
        seconds=_seconds_of(total.group(2)),
        requests_per_second=float(rate.group(1)),
        p50_ms=_duration_ms(percentiles["50"]),
        p99_ms=_duration_ms(percentiles["99"]),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def run_wrk(
    url: str, connections: int, duration_s: float, *, require_answers: bool = True
) -> WrkResult:
    """wrk against ``url``; a timed run that got no answer at all is an error.

    A warm-up (``require_answers=False``) may end before the first slow answer: a cold
    server on a busy machine can take longer than a one-second warm-up.
    """
    command = [
        WRK, "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s",
        "--timeout", REQUEST_TIMEOUT, "--latency", url,
    ]  # fmt: skip
    # Bounded: wrk stops itself after the duration; the margin covers its connect phase.
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=duration_s + 30, check=False
    )
    if completed.returncode != 0:
        raise WrkError(f"wrk exited {completed.returncode}: {completed.stderr.strip()}")
    result = parse(completed.stdout)
    if result.requests == 0 and require_answers:
        raise WrkError(f"no request completed in {duration_s} s:\n{completed.stdout}")
    return result
