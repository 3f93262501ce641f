"""The docs' pagination example, run as written: pages over HTTP, and bad page requests
answered 422 by the bounded parameter types."""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert

from fastapi_asyncdb.fastapi import PROBLEM_JSON

pytestmark = pytest.mark.usefixtures("clean_environment")

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "pagination" / "app.py"
ACCOUNTS = 13


def test_the_docs_show_the_example_file_as_it_is() -> None:
    page = (ROOT / "docs" / "reads.md").read_text()
    block = re.search(
        r"<!-- example: examples/pagination/app.py -->\n```python\n(.*?)```", page, re.S
    )
    assert block is not None
    assert block.group(1) == EXAMPLE.read_text()


def load_example(monkeypatch: pytest.MonkeyPatch, database_url: str) -> ModuleType:
    monkeypatch.setenv("DATABASE_URL", database_url)
    spec = importlib.util.spec_from_file_location("pagination_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "pagination_example", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def client(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    example: Any = load_example(monkeypatch, database_url)
    async with example.app.router.lifespan_context(example.app):
        async with example.db.engine.begin() as connection:
            await connection.run_sync(example.Base.metadata.drop_all)
            await connection.run_sync(example.Base.metadata.create_all)
            rows = [{"id": i * 7, "owner": f"owner {i}"} for i in range(1, ACCOUNTS + 1)]
            await connection.execute(insert(example.Account), rows)
        transport = httpx.ASGITransport(app=example.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def test_the_example_pages_every_account_once_in_order(client: httpx.AsyncClient) -> None:
    seen: list[int] = []
    params: dict[str, Any] = {"limit": 4}
    while True:
        response = await client.get("/accounts", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        seen.extend(item["id"] for item in page["items"])
        if page["next_after"] is None:
            break
        params["after"] = page["next_after"]
    assert seen == [i * 7 for i in range(1, ACCOUNTS + 1)]


BAD_PAGE_REQUESTS = st.one_of(
    st.fixed_dictionaries(
        {"after": st.one_of(st.integers(min_value=2**31), st.integers(max_value=-(2**31) - 1))}
    ),
    st.fixed_dictionaries(
        {"limit": st.one_of(st.integers(max_value=0), st.integers(min_value=101))}
    ),
)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(params=BAD_PAGE_REQUESTS)
async def test_a_cursor_or_limit_out_of_range_is_a_422_problem(
    client: httpx.AsyncClient, params: dict[str, int]
) -> None:
    response = await client.get("/accounts", params=params)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
