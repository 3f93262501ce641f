"""A fault run through ``db_faults``: its 503s by cause and its one trip, in every exporter."""

from __future__ import annotations

import pytest

from .conftest import UserSuite

pytest_plugins = ["pytester"]

FAULT_METRICS = """
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fastapi_asyncdb.otel import instrument
from fastapi_asyncdb.prometheus import register

def counted(db, name, **labels):
    for metric in db.metrics.collect():
        if metric.name == name:
            return sum(
                value
                for sample_labels, value in metric.samples
                if all(sample_labels.get(key) == wanted for key, wanted in labels.items())
            )
    raise KeyError(name)

async def test_a_fault_is_counted_by_cause_in_every_exporter(client, db, db_faults):
    registry, reader = CollectorRegistry(), InMemoryMetricReader()
    register(db, registry)
    instrument(db, MeterProvider(metric_readers=[reader]))
    causes = ("unreachable", "breaker_open")
    before = {cause: counted(db, "unavailable_responses", cause=cause) for cause in causes}
    trips = counted(db, "breaker_trips", role="read")
    async with db_faults.unreachable():
        statuses = [(await client.get("/notes")).status_code for _ in range(4)]
        assert counted(db, "breaker_open", role="read") == 1
    assert statuses == [503] * 4
    after = {cause: counted(db, "unavailable_responses", cause=cause) for cause in causes}
    assert after["unreachable"] - before["unreachable"] == 1
    assert after["breaker_open"] - before["breaker_open"] == 3
    assert counted(db, "breaker_trips", role="read") - trips == 1
    assert counted(db, "breaker_open", role="read") == 0
    scraped = {
        (sample.name, sample.labels.get("cause")): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    points = {
        (metric.name, point.attributes.get("fastapi_asyncdb.cause")): point.value
        for resource in reader.get_metrics_data().resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
        if metric.name == "fastapi_asyncdb.unavailable_responses"
    }
    for cause in causes:
        assert scraped["fastapi_asyncdb_unavailable_responses_total", cause] == after[cause]
        assert points["fastapi_asyncdb.unavailable_responses", cause] == after[cause]
"""


@pytest.mark.backends("postgresql", "mysql")
def test_a_fault_run_shows_in_the_metrics(user_suite: UserSuite) -> None:
    user_suite.pytester.makepyfile(test_fault_metrics=FAULT_METRICS)
    user_suite.run().assert_outcomes(passed=1)
