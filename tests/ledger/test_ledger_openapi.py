"""The ledger against its own OpenAPI: Schemathesis generates requests, every check runs.

Valid and invalid requests are drawn from the published schema for each operation;
every built-in check applies to each answer: no 5xx, status codes, content types,
headers and bodies as documented, schema-valid requests accepted and invalid ones
refused. The app runs on SQLite, in a directory of this module's own.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.python.asgi import shutdown_lifespans

from fastapi_asyncdb import Database
from ledger.app import create_app

# Per operation and phase; bounded so the suite stays fast.
EXAMPLES_PER_OPERATION = 50
IDEMPOTENCY_KEY = "Idempotency-Key"

# Schemathesis parametrizes at collection, from a schema loaded at import; the app's
# lifespan (migrations, pools) starts with its first request, on Schemathesis's loop.
_DATA = tempfile.TemporaryDirectory(prefix="ledger-openapi-")
_APP = create_app(Database(url=f"sqlite+aiosqlite:///{Path(_DATA.name) / 'ledger.db'}"))
ledger = schemathesis.openapi.from_dict(_APP.openapi())
ledger.app = _APP


@ledger.hook
def filter_case(_context: schemathesis.HookContext, case: schemathesis.Case[Any]) -> bool:
    """Leave out transfers to the paying account itself: refused with a 422 by a rule the
    schema states in words, as JSON Schema cannot compare two properties. Other tests
    cover that refusal."""
    body = case.body
    return not (
        isinstance(body, dict)
        and "from_account" in body
        and body.get("from_account") == body.get("to_account")
    )


_fresh_keys = itertools.count()


@ledger.hook
def map_case(_context: schemathesis.HookContext, case: schemathesis.Case[Any]) -> Any:
    """Make each schema-valid Idempotency-Key unique, still schema-valid.

    A key reused with another body is refused with a 422, as the IETF Idempotency-Key
    draft requires; a generator that happens to draw one key twice would report that
    refusal of the ledger's state as a schema-valid request rejected.
    """
    key = case.headers.get(IDEMPOTENCY_KEY)
    if (
        isinstance(key, str)
        and case.meta is not None
        and case.meta.generation.mode == schemathesis.GenerationMode.POSITIVE
    ):
        suffix = f"-{next(_fresh_keys)}"
        case.headers[IDEMPOTENCY_KEY] = key[: 200 - len(suffix)] + suffix
    return case


@pytest.fixture(scope="module", autouse=True)
def _stop_the_app() -> Iterator[None]:
    yield
    shutdown_lifespans()
    _DATA.cleanup()


@ledger.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_matches_the_openapi(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate()
