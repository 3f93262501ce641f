"""Rules every contender shares, so the only difference between them is database access."""

from __future__ import annotations

import gc
import os
import random
from pathlib import Path
from typing import Final

import jinja2
from fastapi.telemetry import TelemetryConfig

from bench.config import MAX_QUERIES, WORLD_ROWS

# FastAPI (0.163+) traces each request itself (a server span, and spans for dependency
# solving, the endpoint and serialisation) as soon as a tracer provider is configured.
# The traced contenders measure statement tracing alone: FastAPI's own is off unless
# BENCH_FASTAPI_TELEMETRY=on. Without a provider it is off anyway.
FASTAPI_TELEMETRY: Final[TelemetryConfig] = (
    {}
    if os.environ.get("BENCH_FASTAPI_TELEMETRY") == "on"
    else {"tracing": False, "metrics": False, "logs": False}
)

# `bench.run --gc-threshold N`: the same collector setting in every contender.
if os.environ.get("BENCH_GC_THRESHOLD"):
    gc.set_threshold(int(os.environ["BENCH_GC_THRESHOLD"]), *gc.get_threshold()[1:])

ADDITIONAL_FORTUNE: Final = "Additional fortune added at request time."

_TEMPLATES: Final = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
)
FORTUNES_TEMPLATE: Final = _TEMPLATES.get_template("fortunes.html")
HTML_MEDIA_TYPE: Final = "text/html; charset=utf-8"


def query_count(raw: str | None) -> int:
    """TechEmpower's rule: clamp to 1..500; missing or non-integer means 1."""
    try:
        count = int(raw) if raw is not None else 1
    except ValueError:
        return 1
    return min(max(count, 1), MAX_QUERIES)


def random_id() -> int:
    return random.randint(1, WORLD_ROWS)


def random_number() -> int:
    return random.randint(1, WORLD_ROWS)


def distinct_sorted_ids(count: int) -> list[int]:
    """Distinct ids so each returned row is the persisted one; sorted so that
    concurrent update transactions lock rows in the same order and never deadlock."""
    return sorted(random.sample(range(1, WORLD_ROWS + 1), count))
