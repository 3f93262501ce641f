"""The problems the ledger's routes document, in the library's problem+json shape."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi_asyncdb.fastapi import PROBLEM_JSON, Problem

__all__ = ["problem_responses"]


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problems a route can answer with."""
    return {
        status: {
            "model": Problem,
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_JSON: {}},
        }
        for status in statuses
    }
