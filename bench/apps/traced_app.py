"""The fast way with every statement traced: ``fast_app`` unchanged, with tracing
(``bench.apps.tracing``) on every engine of the process, as an instrumentation that
patches SQLAlchemy globally would put it.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from bench.apps.fast_app import app
from bench.apps.tracing import trace_statements

__all__ = ["app"]

trace_statements(Engine)
