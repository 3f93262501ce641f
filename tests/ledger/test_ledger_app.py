"""The application's wiring: the library's health routes, startup migrations, the OpenAPI."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from fastapi_asyncdb import Database
from ledger.app import create_app
from tests.ledger.ledger_api import LedgerApi


async def test_readiness_reports_the_database_reachable(api: LedgerApi) -> None:
    response = await api.client.get("/health/ready")

    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_startup_migration_can_be_turned_off_by_the_environment(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEDGER_MIGRATE_ON_STARTUP", "false")
    app = create_app(database)

    async with app.router.lifespan_context(app), database.engine.connect() as connection:
        tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())

    assert tables == []


async def test_every_route_declares_its_response_model(api: LedgerApi) -> None:
    schema = (await api.client.get("/openapi.json")).json()

    operations = {
        (method.upper(), path): operation
        for path, methods in schema["paths"].items()
        if not path.startswith("/health")
        for method, operation in methods.items()
    }
    assert set(operations) == {
        ("POST", "/accounts"),
        ("GET", "/accounts"),
        ("GET", "/accounts/total"),
        ("GET", "/accounts/{account_id}"),
        ("POST", "/transfers"),
        ("GET", "/transfers/{transfer_id}"),
    }
    for operation in operations.values():
        success = next(code for code in operation["responses"] if code.startswith("2"))
        assert "schema" in operation["responses"][success]["content"]["application/json"]


async def test_a_method_no_route_serves_is_a_405_listing_every_method_of_the_path(
    api: LedgerApi,
) -> None:
    schema = (await api.client.get("/openapi.json")).json()
    ledger_paths = {path: set(methods) for path, methods in schema["paths"].items()}
    assert any(len(methods) > 1 for methods in ledger_paths.values())

    for path, methods in ledger_paths.items():
        if path.startswith("/health"):
            continue
        url = path.format(account_id=1, transfer_id=1)
        for method in {"get", "post", "put", "patch", "delete", "options"} - methods:
            response = await api.client.request(method.upper(), url)

            assert response.status_code == 405, (method, path)
            assert response.headers["content-type"] == "application/problem+json"
            allowed = {name.strip().lower() for name in response.headers["allow"].split(",")}
            assert allowed == methods, (method, path)
