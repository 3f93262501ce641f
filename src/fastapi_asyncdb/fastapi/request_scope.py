"""What a request opened is ended here, at the moments only the ASGI messages show.

- The request's unit of work (``SessionDep``) ends when the response starts: by then
  the endpoint has returned, every function-scoped dependency has been torn down, and
  the status is known. A status below 400 commits, anything else rolls back; a commit
  that fails replaces the response with the error's answer, so the client never gets a
  2xx for a write that is not there. An exception anywhere before that rolls back,
  whatever an exception handler then answers; an answer below 400 to a request whose
  unit was rolled back that way is logged at WARNING, naming the route (the client is
  told of success for writes that are not there).
- Read sessions and connections, entered by plain dependencies (a yield dependency
  costs about a fifth of a simple read's CPU), are exited just before the last piece of
  the response body goes out: the endpoint and any streaming body are done with them,
  and a slow client reading a large body holds no connection.

A streaming response starts before its body runs, so the request's unit of work is
committed (and its session closed) before the first byte: a write in the body through
that session raises. A streaming body that writes opens ``db.transaction()`` itself.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import DatabaseNotStartedError
from ..units import TransactionUnit

__all__ = ["RequestScope", "defer_end", "enter_for_request", "note_rollback"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_STATE = "fastapi_asyncdb.request"


class _RequestState:
    __slots__ = ("opened", "rolled_back_by", "unit")

    def __init__(self) -> None:
        self.opened: list[AbstractAsyncContextManager[Any]] = []
        self.unit: TransactionUnit | None = None
        # The class of the exception that rolled the request's unit of work back.
        self.rolled_back_by: str | None = None


class _ResponseReplacedError(Exception):
    """The commit failed as the response started; its error's answer was sent instead."""


class RequestScope:
    """ASGI middleware: ends the request's unit of work and read contexts on time."""

    def __init__(self, app: ASGIApp, *, answer: Callable[[Exception], Response]) -> None:
        self.app = app
        self._answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            # WebSockets have no response start: their units of work end with their
            # dependencies, and their read contexts when the connection ends.
            state = scope[_STATE] = _RequestState()
            try:
                await self.app(scope, receive, send)
            finally:
                await _exit_all(state.opened, *sys.exc_info())
            return

        state = scope[_STATE] = _RequestState()
        replaced = False

        async def send_on_time(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the app's own response, after ours replaced it
            kind = message["type"]
            if kind == "http.response.start" and state.rolled_back_by is not None:
                _warn_if_success(scope, message["status"], state.rolled_back_by)
            if kind == "http.response.start" and state.unit is not None:
                unit, state.unit = state.unit, None
                try:
                    await unit.end(commit=message["status"] < 400)
                except Exception as error:
                    replaced = True
                    await self._answer(error)(scope, receive, send)
                    # Stop the app's response, and the background tasks that would
                    # follow it believing the write was made.
                    raise _ResponseReplacedError from error
            elif kind == "http.response.body" and not message.get("more_body", False):
                await _exit_all(state.opened, None, None, None)
            await send(message)

        try:
            await self.app(scope, receive, send_on_time)
        except _ResponseReplacedError:
            pass
        except BaseException:
            await _end(state, commit=False)
            await _exit_all(state.opened, *sys.exc_info())
            raise
        # An app that answered nothing has nothing to commit for.
        await _end(state, commit=False)
        await _exit_all(state.opened, None, None, None)


def _warn_if_success(scope: Scope, status: int, error: str) -> None:
    if status >= 400:
        return
    route = scope.get("route")
    logger.warning(
        "%s %s answered %d after %s rolled its unit of work back: the client is told of "
        "success, but no write of the unit is stored (an exception rolls back whatever its "
        "handler answers; to commit and redirect, return the response instead)",
        scope.get("method", ""),
        getattr(route, "path", None) or scope.get("path", ""),
        status,
        error,
    )


async def _end(state: _RequestState, *, commit: bool) -> None:
    unit, state.unit = state.unit, None
    if unit is not None:
        await unit.end(commit=commit)


async def _exit_all(opened: list[AbstractAsyncContextManager[Any]], *exc_info: Any) -> None:
    # Every exit runs even if one fails; the first failure is raised after them all.
    failure: BaseException | None = None
    while opened:
        try:
            await opened.pop().__aexit__(*exc_info)
        except BaseException as error:
            failure = failure or error
    if failure is not None and failure is not exc_info[1]:
        raise failure


def _state(scope: Scope) -> _RequestState:
    state: _RequestState | None = scope.get(_STATE)
    if state is None:
        raise DatabaseNotStartedError(
            "this app has no fastapi_asyncdb middleware: call install(app, db) after creating it"
        )
    return state


async def enter_for_request(scope: Scope, context: AbstractAsyncContextManager[T]) -> T:
    """Enter ``context`` now; it is exited just before the response's last byte."""
    opened = _state(scope).opened
    value = await context.__aenter__()
    opened.append(context)
    return value


def note_rollback(scope: Scope, error: BaseException) -> None:
    """The request's unit of work was rolled back by ``error``, raised in the endpoint or
    a dependency: if the request is answered below 400 anyway, say so in the log."""
    state: _RequestState | None = scope.get(_STATE)
    if state is not None and scope["type"] == "http" and isinstance(error, Exception):
        state.rolled_back_by = type(error).__name__


def defer_end(scope: Scope, unit: TransactionUnit) -> bool:
    """Leave the end of ``unit`` to the response's start; False where there is none."""
    if scope["type"] != "http":
        return False
    state = _state(scope)
    if state.unit is not None:
        raise RuntimeError("a request has one unit of work: SessionDep resolved twice")
    state.unit = unit
    return True
