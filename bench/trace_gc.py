"""What the garbage collector costs a traced service: the fast way's ``/db`` in-process.

Each configuration runs in a process of its own (a tracer provider is global): the
fast app (``bench.apps.fast_app``) called through httpx's ASGI transport, untraced or
traced as ``bench.apps.traced_app`` traces it (the OpenTelemetry SDK, every span
recorded and batched), with or without ``gc.freeze()`` after the warm-up. The
collector's callbacks count every collection by generation and time it; the counts
do not depend on how busy the machine is, the times do.

Run: .venv/bin/python -m bench.trace_gc [--requests 6000]   (needs PostgreSQL, as bench.run)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.config import SQLALCHEMY_URL
from bench.contenders import server_environment
from bench.schema import prepare

WARMUP_REQUESTS = 500
CONFIGURATIONS = (("untraced", False), ("traced", False), ("untraced", True), ("traced", True))


async def _measure(traced: bool, freeze: bool, requests: int) -> dict[str, Any]:
    os.environ["DATABASE_URL"] = SQLALCHEMY_URL
    if traced:
        import bench.apps.traced_app  # noqa: F401 - configures the SDK and instruments
    import httpx

    from bench.apps.fast_app import app, db

    collections = {generation: [0, 0.0] for generation in range(3)}
    began = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            counted = collections[info["generation"]]
            counted[0] += 1
            counted[1] += time.perf_counter() - began[0]

    async with db.lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for _ in range(WARMUP_REQUESTS):
                (await client.get("/db")).raise_for_status()
            if freeze:
                gc.collect()
                gc.freeze()
            gc.callbacks.append(timed)
            cpu = time.process_time()
            for _ in range(requests):
                (await client.get("/db")).raise_for_status()
            cpu = time.process_time() - cpu
            gc.callbacks.remove(timed)
    return {
        "cpu_us_per_request": cpu / requests * 1e6,
        "collections": {str(g): count for g, (count, _) in collections.items()},
        "gc_us_per_request": {str(g): s / requests * 1e6 for g, (_, s) in collections.items()},
    }


def _row(name: str, freeze: bool, result: dict[str, Any]) -> str:
    counts, costs = result["collections"], result["gc_us_per_request"]
    per_generation = " | ".join(f"{counts[g]} / {costs[g]:.1f}" for g in "012")
    total = sum(costs.values())
    frozen = "yes" if freeze else "no"
    cpu = result["cpu_us_per_request"]
    return f"| {name} | {frozen} | {per_generation} | {total:.1f} | {cpu:.0f} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trace_gc", description=__doc__)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--one", choices=["untraced", "traced"], help=argparse.SUPPRESS)
    parser.add_argument("--freeze", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        result = asyncio.run(_measure(args.one == "traced", args.freeze, args.requests))
        print(json.dumps(result))
        return 0
    asyncio.run(prepare())
    print(
        f"/db in-process, {args.requests} requests after {WARMUP_REQUESTS}; "
        "collections / collector us per request, by generation"
    )
    print("| contender | gc.freeze() | gen 0 | gen 1 | gen 2 | collector us/req | CPU us/req |")
    print("|---|---|---|---|---|---|---|")
    for name, freeze in CONFIGURATIONS:
        command = [sys.executable, "-m", "bench.trace_gc", "--one", name]
        command += ["--requests", str(args.requests)] + (["--freeze"] if freeze else [])
        # The contenders' environment: settings inherited from the shell dropped.
        environment = server_environment({})
        output = subprocess.run(
            command, check=True, capture_output=True, text=True, env=environment
        ).stdout
        print(_row(name, freeze, json.loads(output.strip().splitlines()[-1])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
