"""The physical limit, traced: the asyncpg app with OpenTelemetry's asyncpg
instrumentation (a span per query) and the same SDK setup as ``traced``."""

from __future__ import annotations

from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

from bench.apps.otel import configure_tracing

configure_tracing()
AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]

from bench.apps.asyncpg_app import app  # noqa: E402

__all__ = ["app"]
