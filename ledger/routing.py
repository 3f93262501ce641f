"""The ledger's routers: JSON bodies read by ledger.json_body, query parameters and headers
given once, and complete Allow headers."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from .json_body import loads

__all__ = ["LedgerRoute", "ledger_router"]


class _ExactJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


def _refuse_repeated_parameters(
    request: Request, query: frozenset[str], headers: frozenset[str]
) -> None:
    # FastAPI would keep the last of ?after=1&after=9 (the first of two Idempotency-Key
    # headers) and drop the rest unseen; every query parameter and header of the ledger
    # is a single value, so a repeated one is refused. Names the route does not declare
    # are ignored, as FastAPI ignores them: a route without parameters documents no
    # 422, so it must not answer one.
    names = [name for name, _value in request.query_params.multi_items() if name in query]
    repeated = [("query", name) for name in sorted({n for n in names if names.count(n) > 1})]
    repeated += [
        ("header", name) for name in sorted(headers) if len(request.headers.getlist(name)) > 1
    ]
    if repeated:
        raise RequestValidationError(
            [
                {
                    "type": "repeated",
                    "loc": (where, name),
                    "msg": f"{where.capitalize()} parameter given more than once",
                }
                for where, name in repeated
            ]
        )


def _names(dependant: Dependant, kind: str) -> frozenset[str]:
    names = set()
    for parameter in getattr(dependant, f"{kind}_params"):
        name = parameter.alias
        if kind == "header":
            # FastAPI reads a header without an alias of its own with hyphens.
            converts = getattr(parameter.field_info, "convert_underscores", True)
            name = (name.replace("_", "-") if converts and name == parameter.name else name).lower()
        names.add(name)
    for sub in dependant.dependencies:
        names |= _names(sub, kind)
    return frozenset(names)


class LedgerRoute(APIRoute):
    """A route whose JSON body is read by ``loads``, whose query parameters and headers
    may each be given once, and whose 405 lists every method.

    Starlette answers a method no route of a path takes with the Allow header of the
    first route it tried: ``OPTIONS /accounts`` said ``Allow: POST`` though GET is served
    too. Each route here knows its router's routes and lists the methods of all those
    on its path.
    """

    siblings: Sequence[BaseRoute] = ()

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        query, headers = _names(self.dependant, "query"), _names(self.dependant, "header")

        async def read_exactly(request: Request) -> Response:
            _refuse_repeated_parameters(request, query, headers)
            return await handler(_ExactJsonRequest(request.scope, request.receive))

        return read_exactly

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in (self.methods or ()):
            allowed = {
                method
                for route in self.siblings
                if isinstance(route, APIRoute) and route.path == self.path
                for method in route.methods or ()
            }
            if scope["method"] not in allowed:
                raise HTTPException(405, headers={"Allow": ", ".join(sorted(allowed))})
        await super().handle(scope, receive, send)


class _LedgerRouter(APIRouter):
    def add_api_route(self, *args: Any, **kwargs: Any) -> None:
        super().add_api_route(*args, **kwargs)
        route = self.routes[-1]
        if isinstance(route, LedgerRoute):
            route.siblings = self.routes


def ledger_router(prefix: str, tag: str) -> APIRouter:
    """An APIRouter whose routes are LedgerRoutes."""
    return _LedgerRouter(prefix=prefix, tags=[tag], route_class=LedgerRoute)
