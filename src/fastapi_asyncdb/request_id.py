"""The id of the request a statement runs for, as log lines and spans carry it.

The FastAPI glue sets it for each request (from ``X-Request-ID``, or a new one); the
core reads it here without knowing about FastAPI. Outside a request it is None.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

__all__ = ["HEADER", "current_request_id", "request_id_from_header"]

HEADER = "x-request-id"
current_request_id: ContextVar[str | None] = ContextVar("fastapi_asyncdb_request_id", default=None)

# What a proxy or a client may send: an id, not text. Anything else (too long, spaces,
# line breaks that would forge log lines) is replaced by a new id.
_ACCEPTED = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def request_id_from_header(value: str | None) -> str:
    """The request's id: the header's when it is a plausible id, a new one otherwise."""
    if value is not None and _ACCEPTED.fullmatch(value):
        return value
    return uuid.uuid4().hex
