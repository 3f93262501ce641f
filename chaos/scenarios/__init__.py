"""The fault scenarios by name, each with the databases it applies to.

``docs/faults.md`` describes each one: what is injected, how, and its pass criteria.
"""

from __future__ import annotations

from dataclasses import dataclass

from chaos.scenarios.clients import disconnects
from chaos.scenarios.common import Options, ScenarioFunction
from chaos.scenarios.exhaustion import exhaustion
from chaos.scenarios.hangs import blackhole, freeze
from chaos.scenarios.integrity import broken_checker, commit_cut
from chaos.scenarios.pooler import pgbouncer
from chaos.scenarios.restarts import outage, restart, terminate
from chaos.scenarios.sqlite_writers import sqlite_writers
from chaos.scenarios.timeouts import timeouts

__all__ = ["SCENARIOS", "Options", "Scenario", "ScenarioFunction"]


@dataclass(frozen=True)
class Scenario:
    name: str
    run: ScenarioFunction
    # Most faults act on PostgreSQL's processes or sessions; the proxy's work anywhere.
    databases: tuple[str, ...]
    summary: str
    # False: a variant left out of ``--short`` (the CI suite) to keep it short.
    in_short_suite: bool = True


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario(
            "restart",
            restart,
            ("postgresql", "mariadb"),
            "fast restarts and an immediate stop (MariaDB: every connection cut)",
        ),
        Scenario("terminate", terminate, ("postgresql",), "pg_terminate_backend every 2 s"),
        Scenario("outage", outage, ("postgresql",), "database stopped 30 s (4 s with --short)"),
        Scenario(
            "blackhole",
            blackhole,
            ("postgresql",),
            "proxy drops every packet 30 s (6 s with --short)",
        ),
        Scenario(
            "freeze",
            freeze,
            ("postgresql",),
            "SIGSTOP of every PostgreSQL process 30 s (6 s with --short)",
            in_short_suite=False,
        ),
        Scenario(
            "exhaustion",
            exhaustion,
            ("postgresql",),
            "200 concurrent slow reads, pool 5+5, acquire timeout 2 s",
        ),
        Scenario(
            "disconnects",
            disconnects,
            ("postgresql",),
            "1,000 requests abandoned by their clients (300 with --short), then blocked ones",
        ),
        Scenario(
            "commit-cut",
            commit_cut,
            ("postgresql", "mariadb"),
            "every third COMMIT dropped and its connection cut",
        ),
        Scenario(
            "broken-checker",
            broken_checker,
            ("postgresql",),
            "a deliberately broken ledger: the checker must find violations",
        ),
        Scenario(
            "timeouts",
            timeouts,
            ("postgresql",),
            "statement and idle-in-transaction timeouts",
        ),
        Scenario("sqlite-writers", sqlite_writers, ("sqlite",), "SQLite, 16 concurrent writers"),
        Scenario(
            "pgbouncer",
            pgbouncer,
            ("postgresql",),
            "through PgBouncer (transaction mode), 2 workers: PgBouncer restarted, paused, killed",
        ),
    )
}
