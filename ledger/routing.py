"""The ledger's routers: JSON bodies read by ledger.json_body, query parameters given once,
and complete Allow headers."""

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


def _refuse_repeated_query_parameters(request: Request, declared: frozenset[str]) -> None:
    # FastAPI would keep the last of ?after=1&after=9 and drop the rest unseen; every
    # query parameter of the ledger is a single value, so a repeated one is refused.
    # Names the route does not declare are ignored, as FastAPI ignores them: a route
    # without parameters documents no 422, so it must not answer one.
    names = [name for name, _value in request.query_params.multi_items() if name in declared]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise RequestValidationError(
            [
                {
                    "type": "repeated",
                    "loc": ("query", name),
                    "msg": "Query parameter given more than once",
                    "input": request.query_params.getlist(name),
                }
                for name in repeated
            ]
        )


def _query_names(dependant: Dependant) -> frozenset[str]:
    names = {parameter.alias for parameter in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return frozenset(names)


class LedgerRoute(APIRoute):
    """A route whose JSON body is read by ``loads``, whose query parameters may each be
    given once, and whose 405 lists every method.

    Starlette answers a method no route of a path takes with the Allow header of the
    first route it tried: ``OPTIONS /accounts`` said ``Allow: POST`` though GET is served
    too. Each route here knows its router's routes and lists the methods of all those
    on its path.
    """

    siblings: Sequence[BaseRoute] = ()

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        declared = _query_names(self.dependant)

        async def read_exactly(request: Request) -> Response:
            _refuse_repeated_query_parameters(request, declared)
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
