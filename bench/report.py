"""Aggregate the measured cells into the summary table; render it as text, Markdown and JSON."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import platform
import statistics
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from bench.pg import connect
from bench.targets import Verdict, judge
from bench.wrk import WrkResult

RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
BASELINES: Final = ("asyncpg", "recipe")


@dataclass(frozen=True)
class Cell:
    """One timed wrk run against one freshly started server."""

    endpoint: str
    connections: int
    contender: str
    round: int
    wrk: WrkResult
    cpu_us_per_request: float
    loadavg_1min: float  # other work on the shared machine shows here


@dataclass(frozen=True)
class SummaryRow:
    endpoint: str
    connections: int
    contender: str
    rounds: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int  # summed over rounds: one is already a fault
    socket_errors: int
    cpu_us_per_request: float
    vs_asyncpg: float | None
    vs_recipe: float | None


def summarise(cells: list[Cell]) -> list[SummaryRow]:
    """Median over rounds per (endpoint, connections, contender), then ratios of the medians."""
    groups: dict[tuple[str, int, str], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.endpoint, cell.connections, cell.contender), []).append(cell)
    rates = {
        key: statistics.median(c.wrk.requests_per_second for c in group)
        for key, group in groups.items()
    }
    rows = []
    for (endpoint, connections, contender), group in groups.items():
        rate = rates[(endpoint, connections, contender)]
        ratios = {
            baseline: rate / base
            if (base := rates.get((endpoint, connections, baseline)))
            else None
            for baseline in BASELINES
        }
        rows.append(
            SummaryRow(
                endpoint=endpoint,
                connections=connections,
                contender=contender,
                rounds=len(group),
                requests_per_second=rate,
                p50_ms=statistics.median(c.wrk.p50_ms for c in group),
                p99_ms=statistics.median(c.wrk.p99_ms for c in group),
                non_2xx=sum(c.wrk.non_2xx for c in group),
                socket_errors=sum(c.wrk.socket_errors for c in group),
                cpu_us_per_request=statistics.median(c.cpu_us_per_request for c in group),
                vs_asyncpg=ratios["asyncpg"],
                vs_recipe=ratios["recipe"],
            )
        )
    return rows


_HEADERS: Final = (
    "endpoint", "conns", "contender", "req/s", "p50 ms", "p99 ms",
    "non-2xx", "sock err", "CPU us/req", "vs asyncpg", "vs recipe",
)  # fmt: skip


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _cells_of(row: SummaryRow) -> list[str]:
    return [
        row.endpoint, str(row.connections), row.contender, f"{row.requests_per_second:,.0f}",
        f"{row.p50_ms:.2f}", f"{row.p99_ms:.2f}", str(row.non_2xx), str(row.socket_errors),
        f"{row.cpu_us_per_request:,.0f}", _ratio(row.vs_asyncpg), _ratio(row.vs_recipe),
    ]  # fmt: skip


def text_table(rows: list[SummaryRow]) -> str:
    table = [list(_HEADERS), *(_cells_of(row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(_HEADERS))]
    return "\n".join(
        "  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)) for line in table
    )


def markdown_table(rows: list[SummaryRow]) -> str:
    lines = ["| " + " | ".join(_HEADERS) + " |", "|" + "---|" * len(_HEADERS)]
    lines += ["| " + " | ".join(_cells_of(row)) + " |" for row in rows]
    return "\n".join(lines)


def target_verdicts(rows: list[SummaryRow]) -> list[Verdict]:
    return judge(
        {(row.endpoint, row.connections, row.contender): row.requests_per_second for row in rows}
    )


_TARGET_HEADERS: Final = ("contender", "vs", "endpoint", "conns", "ratio", "at least", "outcome")


def _target_cells(verdict: Verdict) -> list[str]:
    target = verdict.target
    return [
        target.contender, target.baseline, target.endpoint, str(verdict.connections),
        _ratio(verdict.ratio), f"{target.at_least:.2f}", verdict.outcome,
    ]  # fmt: skip


def targets_summary(verdicts: list[Verdict]) -> str:
    outcomes = [verdict.outcome for verdict in verdicts]
    return ", ".join(
        f"{outcomes.count(outcome)} {outcome}" for outcome in ("met", "missed", "not measured")
    )


def targets_markdown(verdicts: list[Verdict]) -> str:
    lines = ["| " + " | ".join(_TARGET_HEADERS) + " |", "|" + "---|" * len(_TARGET_HEADERS)]
    lines += ["| " + " | ".join(_target_cells(verdict)) + " |" for verdict in verdicts]
    return "\n".join(lines)


def targets_text(verdicts: list[Verdict]) -> str:
    measured = [verdict for verdict in verdicts if verdict.ratio is not None]
    return "\n".join(
        f"{v.target.contender} vs {v.target.baseline} {v.target.endpoint} c={v.connections}: "
        f"{_ratio(v.ratio)} (at least {v.target.at_least:.2f}) {v.outcome}"
        for v in measured
    )


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


async def _postgres_version() -> str:
    conn = await connect()
    try:
        version: str = await conn.fetchval("SHOW server_version")
        return version
    finally:
        await conn.close()


def _wrk_version() -> str:
    completed = subprocess.run(
        ["wrk", "--version"], capture_output=True, text=True, timeout=5, check=False
    )
    return (
        (completed.stdout or completed.stderr).splitlines()[0]
        if (completed.stdout or completed.stderr)
        else "?"
    )


def machine_info() -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "nproc": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "fastapi": _version("fastapi"),
        "sqlalchemy": _version("sqlalchemy"),
        "asyncpg": _version("asyncpg"),
        "uvicorn": _version("uvicorn"),
        "uvloop": _version("uvloop"),
        "fastapi-asyncdb": _version("fastapi-asyncdb"),
        "opentelemetry-api": _version("opentelemetry-api"),
        "postgresql": asyncio.run(_postgres_version()),
        "wrk": _wrk_version(),
    }


def write_results(
    info: dict[str, Any],
    settings: dict[str, Any],
    rows: list[SummaryRow],
    cells: list[Cell],
    failures: dict[str, list[str]],
    stem: str = "latest",
) -> tuple[Path, Path]:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    markdown_path, json_path = RESULTS_DIR / f"{stem}.md", RESULTS_DIR / f"{stem}.json"
    facts = "\n".join(f"- {key}: {value}" for key, value in {**info, **settings}.items())
    excluded = "\n".join(
        f"- **{name}** not timed: " + "; ".join(problems[:5]) for name, problems in failures.items()
    )
    verdicts = target_verdicts(rows)
    markdown_path.write_text(
        f"# Benchmark results\n\n{facts}\n\n{excluded}\n\n{markdown_table(rows)}\n\n"
        "Medians over rounds; non-2xx and socket errors are summed over rounds. "
        "Ratios are req/s of the row's contender over the baseline's, same run.\n\n"
        f"## Targets ({targets_summary(verdicts)})\n\n{targets_markdown(verdicts)}\n",
        encoding="utf-8",
    )
    payload = {
        "machine": info,
        "settings": settings,
        "failures": failures,
        "summary": [asdict(row) for row in rows],
        "targets": [
            {
                **asdict(verdict.target),
                "connections": verdict.connections,
                "ratio": verdict.ratio,
                "outcome": verdict.outcome,
            }
            for verdict in verdicts
        ],
        "cells": [asdict(cell) for cell in cells],
    }
    json_path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return markdown_path, json_path
