"""What each contender must reach, as a ratio of another's requests per second measured in
the same run; ``docs/benchmark.md`` explains each target."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from bench.config import ENDPOINTS

# Every target holds at both connection counts of a full run.
TARGET_CONNECTIONS: Final = (32, 256)


@dataclass(frozen=True)
class Target:
    contender: str
    baseline: str
    endpoint: str
    at_least: float


def _each_endpoint(contender: str, baseline: str, at_least: float) -> tuple[Target, ...]:
    return tuple(Target(contender, baseline, endpoint, at_least) for endpoint in ENDPOINTS)


TARGETS: Final[tuple[Target, ...]] = (
    # The default way costs nothing against what users would write by hand.
    *_each_endpoint("default", "recipe", 1.0),
    # The fast way comes close to the driver alone...
    Target("fast", "asyncpg", "db", 0.75),
    Target("fast", "asyncpg", "queries", 0.60),
    Target("fast", "asyncpg", "fortunes", 0.70),
    Target("fast", "asyncpg", "updates", 0.70),
    # ...and well beyond the hand-written recipe.
    Target("fast", "recipe", "db", 2.0),
    Target("fast", "recipe", "queries", 1.5),
    Target("fast", "recipe", "fortunes", 1.5),
    Target("fast", "recipe", "updates", 1.2),
    # Tracing every statement keeps the fast way fast.
    *_each_endpoint("traced", "fast", 0.90),
)


@dataclass(frozen=True)
class Verdict:
    target: Target
    connections: int
    ratio: float | None  # None: the run did not measure both contenders here

    @property
    def outcome(self) -> str:
        if self.ratio is None:
            return "not measured"
        return "met" if self.ratio >= self.target.at_least else "missed"


def judge(rates: dict[tuple[str, int, str], float]) -> list[Verdict]:
    """Every target at every connection count, from the median req/s per
    (endpoint, connections, contender) of one run."""
    verdicts = []
    for target in TARGETS:
        for connections in TARGET_CONNECTIONS:
            rate = rates.get((target.endpoint, connections, target.contender))
            base = rates.get((target.endpoint, connections, target.baseline))
            ratio = rate / base if rate is not None and base else None
            verdicts.append(Verdict(target, connections, ratio))
    return verdicts
