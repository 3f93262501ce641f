"""A fault run through ``db_faults``: the metrics count its 503s by cause and its one trip."""

from __future__ import annotations

import pytest

from .conftest import UserSuite

pytest_plugins = ["pytester"]

FAULT_METRICS = """
def counted(db, name, **labels):
    for metric in db.metrics.collect():
        if metric.name == name:
            return sum(
                value
                for sample_labels, value in metric.samples
                if all(sample_labels.get(key) == wanted for key, wanted in labels.items())
            )
    raise KeyError(name)

async def test_a_fault_is_counted_by_cause_and_trips_the_breaker_once(client, db, db_faults):
    before = {
        cause: counted(db, "unavailable_responses", cause=cause)
        for cause in ("unreachable", "breaker_open")
    }
    trips = counted(db, "breaker_trips", role="read")
    async with db_faults.unreachable():
        statuses = [(await client.get("/notes")).status_code for _ in range(4)]
        assert counted(db, "breaker_open", role="read") == 1
    assert statuses == [503] * 4
    assert counted(db, "unavailable_responses", cause="unreachable") - before["unreachable"] == 1
    assert counted(db, "unavailable_responses", cause="breaker_open") - before["breaker_open"] == 3
    assert counted(db, "breaker_trips", role="read") - trips == 1
    assert counted(db, "breaker_open", role="read") == 0
"""


@pytest.mark.backends("postgresql", "mysql")
def test_a_fault_run_shows_in_the_metrics(user_suite: UserSuite) -> None:
    user_suite.pytester.makepyfile(test_fault_metrics=FAULT_METRICS)
    user_suite.run().assert_outcomes(passed=1)
