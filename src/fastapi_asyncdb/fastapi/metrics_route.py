"""``/metrics``: the Prometheus text of a registry holding the database's metrics.

Off unless ``install(app, db, metrics=True)`` (or a ``CollectorRegistry``) asks for it:
the route tells anyone who can reach the app its pools' sizes and its error rates, so
it is the operator's choice to serve it, and where. Needs ``fastapi-asyncdb[prometheus]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from ..database import Database
from ..errors import ConfigurationError

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

__all__ = ["metrics_router"]


def metrics_router(
    database: Database, registry: CollectorRegistry | None, *, path: str
) -> APIRouter:
    """A router serving ``registry`` (default: prometheus_client's own) at ``path``."""
    try:
        from prometheus_client.exposition import choose_encoder
        from prometheus_client.registry import REGISTRY

        from ..prometheus import register
    except ImportError as error:  # pragma: no cover - the extra is part of the dev setup
        raise ConfigurationError(
            "install(metrics=...) needs prometheus-client: "
            "pip install 'fastapi-asyncdb[prometheus]'"
        ) from error
    target = REGISTRY if registry is None else registry
    register(database, target)
    router = APIRouter()

    @router.get(path, include_in_schema=False)
    async def metrics(request: Request) -> Response:
        # On the loop: a scrape is short, and a thread would cost more than the render.
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(target), media_type=content_type)

    return router
