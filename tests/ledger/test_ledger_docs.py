"""The API docs work without internet access: every asset they load is served locally."""

from __future__ import annotations

import re

import pytest

from tests.ledger.ledger_api import LedgerApi


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_doc_pages_load_only_assets_the_service_serves_itself(
    api: LedgerApi, page: str
) -> None:
    response = await api.client.get(page)
    assert response.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', response.text)
    assert assets
    for asset in assets:
        assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
        served = await api.client.get(asset)
        assert served.status_code == 200, asset
        assert len(served.content) > 1000
