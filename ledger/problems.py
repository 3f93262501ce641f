"""The service's own errors in the same RFC 9457 problem+json shape as the database errors."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from fastapi_asyncdb import problem_response

__all__ = ["install_problem_handler", "problem_responses"]

_PROBLEM_JSON = "application/problem+json"


def problem_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI entries for the problems a route can answer with."""
    return {
        status: {"description": HTTPStatus(status).phrase, "content": {_PROBLEM_JSON: {}}}
        for status in statuses
    }


def install_problem_handler(app: FastAPI) -> None:
    async def on_http_exception(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, HTTPException)
        response = problem_response(
            error.status_code, HTTPStatus(error.status_code).phrase, str(error.detail)
        )
        response.headers.update(error.headers or {})
        return response

    app.add_exception_handler(HTTPException, on_http_exception)
