"""``traced`` as it ran before the fast path stood in for the instrumentation: one more
listener on the engines' statement events (it does nothing) sends every statement back
through SQLAlchemy, where the instrumentation's own listeners open its span. What any
listener the fast path does not recognise costs a traced app.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from bench.apps.traced_app import app

__all__ = ["app"]


def _unrecognised(*_arguments: Any) -> None:
    """A listener of the app's own, as a logging or metrics hook would be."""


event.listen(Engine, "after_cursor_execute", _unrecognised)
