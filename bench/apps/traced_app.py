"""The fast way with every statement traced, as a traced service has it: OpenTelemetry's
SDK (``bench.apps.otel``) and its SQLAlchemy instrumentation, switched on before the
app is imported, so that every engine the library creates is instrumented.
"""

from __future__ import annotations

from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

from bench.apps.otel import configure_tracing

configure_tracing()
# The instrumentation declares SQLAlchemy < 2.1 and does nothing on 2.1 unless told.
SQLAlchemyInstrumentor().instrument(skip_dep_check=True)

# Imported after the instrumentation patched create_async_engine.
from bench.apps.fast_app import app  # noqa: E402

__all__ = ["app"]
