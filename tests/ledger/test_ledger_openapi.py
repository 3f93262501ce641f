"""The ledger against its own OpenAPI: Schemathesis generates requests, every check runs.

Valid and invalid requests are drawn from the published schema for each operation;
every built-in check applies to each answer: no 5xx, status codes, content types,
headers and bodies as documented, schema-valid requests accepted and invalid ones
refused. The requests go through the plugin's ``client``: the app the other contract
tests use, on each backend, each test inside the rollback isolation.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, settings

from fastapi_asyncdb import Database
from ledger.app import create_app

# Per operation and phase; bounded so the suite stays fast.
EXAMPLES_PER_OPERATION = 50
IDEMPOTENCY_KEY = "Idempotency-Key"

# Schemathesis parametrizes at collection, from a schema loaded at import: the schema
# of an app built for it alone, which never starts: its file is never opened.
_SCHEMA = create_app(Database(url="sqlite+aiosqlite:///never-opened.db")).openapi()
ledger = schemathesis.openapi.from_dict(_SCHEMA)


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


async def _call(case: schemathesis.Case[Any], client: httpx.AsyncClient) -> httpx.Response:
    request = case.as_transport_kwargs()
    # Serialized for requests, whose ``data`` is httpx's ``content`` for a raw body.
    if isinstance(request.get("data"), str | bytes):
        request["content"] = request.pop("data")
    # httpx takes cookies per client only; the ledger declares none, so none are drawn.
    assert not request.pop("cookies", None)
    return await client.request(**request)


# Schemathesis runs an async test on a loop of its own, and pytest-asyncio does not see
# its items: the test is synchronous and sends each request on the Database's loop.
@ledger.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_matches_the_openapi(
    case: schemathesis.Case[Any],
    client: httpx.AsyncClient,
    session_loop: asyncio.AbstractEventLoop,
) -> None:
    case.validate_response(session_loop.run_until_complete(_call(case, client)))
