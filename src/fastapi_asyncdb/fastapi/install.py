"""``install(app, db)``: everything a FastAPI app needs from this package, in one call."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException

from ..database import Database
from ..errors import ConfigurationError, DatabaseError, ErrorKind
from .dependencies import STATE_KEY, get_session
from .disconnect import CancelOnDisconnect
from .health import health_router
from .limits import BodyLimit
from .problems import (
    PROBLEM_JSON,
    DatabaseErrorHandler,
    ErrorAnswer,
    Problem,
    ValidationProblem,
    http_exception_handler,
    unexpected_error_handler,
    validation_exception_handler,
)
from .request_id import RequestId
from .request_scope import RequestScope
from .startup import StartupRefusal, noting_refusals

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

__all__ = ["install"]

DEFAULT_MAX_BODY_SIZE = 1024 * 1024


def install(
    app: FastAPI,
    database: Database,
    *,
    health_prefix: str | None = "/health",
    answers: Mapping[ErrorKind, ErrorAnswer] | None = None,
    problem_details: bool = True,
    max_body_size: int | None = DEFAULT_MAX_BODY_SIZE,
    cancel_on_disconnect: bool = True,
    disconnect_watch_after: float = 0.5,
    metrics: bool | CollectorRegistry = False,
    metrics_path: str = "/metrics",
    request_id: bool = True,
) -> None:
    """Wire ``database`` into ``app``: dependencies, error answers, health routes, middleware.

    - The dependencies (``SessionDep``...) find ``database`` on the app.
    - Database errors are answered from ``ERROR_ANSWERS``, with ``answers`` over it.
    - With ``problem_details``, ``HTTPException``, validation errors and any unexpected
      exception (a 500, logged with quoted values masked) are answered as problem
      details too, and OpenAPI documents every error response that way.
    - ``health_prefix``: ``/live``, ``/ready`` and ``/pools`` under it (None: no routes).
    - ``max_body_size``: larger request bodies are answered 413 (None: no limit).
    - ``cancel_on_disconnect``: a request whose client leaves is cancelled once it has
      run ``disconnect_watch_after`` seconds, so its queries stop.
    - ``metrics``: ``True`` serves the database's metrics, in prometheus_client's default
      registry, at ``metrics_path``; a ``CollectorRegistry`` serves that registry with
      them in it. Off by default: the route tells whoever reaches the app its load.
    - ``request_id``: each request gets an id (its ``X-Request-ID`` header, or a new
      one) that slow-statement log lines carry and the response sends back.
    - At startup, a streaming (generator) endpoint that depends on ``SessionDep`` is
      refused: its session would be committed before the first byte of its body.
    - A startup refused for its configuration (``ConfigurationError``: a streaming
      endpoint, the connection budget) is reported in one line, without a traceback.
    """
    setattr(app.state, STATE_KEY, database)
    handler = DatabaseErrorHandler(database, answers)
    app.add_exception_handler(SQLAlchemyError, handler)
    app.add_exception_handler(DatabaseError, handler)
    if problem_details:
        app.add_exception_handler(HTTPException, http_exception_handler)
        app.add_exception_handler(RequestValidationError, validation_exception_handler)
        # Starlette answers any other exception in text/plain: problem details here too.
        app.add_exception_handler(Exception, unexpected_error_handler)
        _document_problems(app)
    # Starlette puts the last middleware added outermost.
    if cancel_on_disconnect:
        app.add_middleware(
            CancelOnDisconnect,
            watch_after=disconnect_watch_after,
            on_cancel=database.metrics.cancelled_on_disconnect,
        )
    # Outside the disconnect watch: units of work end after a cancellation was dealt with.
    app.add_middleware(RequestScope, answer=handler.response)
    if max_body_size is not None:
        app.add_middleware(BodyLimit, max_body_size=max_body_size)
    if request_id:
        # Outermost: every statement of the request, and its error answers, see the id.
        app.add_middleware(RequestId)
    if health_prefix is not None:
        app.include_router(
            health_router(database, retry_after=database.settings.unavailable_retry_after),
            prefix=health_prefix,
        )
    refusals: list[ConfigurationError] = []
    app.add_middleware(StartupRefusal, refusals=refusals)
    if metrics is not False:
        from .metrics_route import metrics_router

        registry = None if metrics is True else metrics
        app.include_router(metrics_router(database, registry, path=metrics_path))
    _check_routes_at_startup(app, refusals)


def _check_routes_at_startup(app: FastAPI, refusals: list[ConfigurationError]) -> None:
    # Routes are usually added after install(); the lifespan sees them all.
    original = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(lifespan_app: Any) -> AsyncIterator[Any]:
        _refuse_streaming_sessions(app)
        async with original(lifespan_app) as state:
            yield state

    app.router.lifespan_context = noting_refusals(lifespan, refusals)


def _refuse_streaming_sessions(app: FastAPI) -> None:
    for route in app.routes:
        if not isinstance(route, APIRoute):
            continue
        endpoint = route.endpoint
        streams = inspect.isasyncgenfunction(endpoint) or inspect.isgeneratorfunction(endpoint)
        if streams and _depends_on(route.dependant, get_session):
            raise ConfigurationError(
                f"{', '.join(sorted(route.methods or ()))} {route.path} streams its response and "
                "depends on SessionDep, whose session is committed and closed before the "
                "first byte of the body; open 'async with db.transaction() as session:' "
                "inside the generator instead"
            )


def _depends_on(dependant: Dependant, call: Callable[..., Any]) -> bool:
    return any(sub.call is call or _depends_on(sub, call) for sub in dependant.dependencies)


def _document_problems(app: FastAPI) -> None:
    """Make OpenAPI say what the handlers send: problem details for 422 and 503."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (Problem, ValidationProblem):
            for name, definition in (
                model.model_json_schema(ref_template="#/components/schemas/{model}")
                .pop("$defs", {})
                .items()
            ):
                components.setdefault(name, definition)
            components[model.__name__] = model.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
        problem = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        invalid = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ValidationProblem"}}}
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.setdefault("responses", {})
                if "422" in responses:
                    responses["422"] = {"description": "Validation Error", "content": invalid}
                answers = [
                    ("413", "Request body too large"),
                    ("503", "Database unavailable; retry after Retry-After seconds"),
                ]
                if "requestBody" in operation:
                    answers.append(("400", "The request body could not be read"))
                for status, description in answers:
                    responses.setdefault(status, {"description": description, "content": problem})
                for status, response in responses.items():
                    if status[0] in "45" and "content" not in response:
                        response["content"] = problem
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
