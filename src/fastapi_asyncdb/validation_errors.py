"""Validation errors without the input they refused.

A model that does not fit a row (a response model, or ``Model.model_validate(row)``)
fails with the row's values in its errors, and its text prints them: pydantic's
``ValidationError`` and FastAPI's ``ValidationException`` family alike. FastAPI's
classes are recognised by their module and fields, since the core never imports
FastAPI.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic_core import ValidationError

from .server_messages import HIDDEN, redact_quoted

__all__ = ["RedactedValidationError", "redact_validation_error"]


def redact_validation_error(error: BaseException) -> bool:
    """Mask the input in a validation error, in place; False if ``error`` is none."""
    if isinstance(error, ValidationError):
        if not isinstance(error, RedactedValidationError):
            error.__class__ = RedactedValidationError
        return True
    if type(error).__module__.startswith("fastapi") and isinstance(
        getattr(error, "_errors", None), list | tuple
    ):
        _redact_fastapi_validation(error)
        return True
    return False


class RedactedValidationError(ValidationError):
    """pydantic's ``ValidationError`` whose text and default ``errors()`` hold no input.

    pydantic builds the text of a ``ValidationError`` from errors it keeps out of reach,
    and Starlette re-raises the very object a 500 handler got for the server to log:
    the error cannot be replaced, only its class. This subclass adds no field (so the
    class of a raised error can be switched to it) and still passes ``except
    ValidationError``.
    """

    __slots__ = ()

    def __str__(self) -> str:
        places = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc']) or '(root)'}: {issue['type']}"
            for issue in super().errors(include_input=False, include_context=False)[:20]
        )
        count = self.error_count()
        return f"{count} validation error{'s' if count != 1 else ''} for {self.title}: {places}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def errors(
        self,
        *,
        include_url: bool = True,
        include_context: bool = False,
        include_input: bool = False,
    ) -> list[Any]:
        """The errors without input or context unless asked for (they may hold a row)."""
        return list(
            super().errors(
                include_url=include_url,
                include_context=include_context,
                include_input=include_input,
            )
        )


# Error types whose message is written by a validator and may quote the value.
_AUTHORED_MESSAGES = frozenset({"value_error", "assertion_error"})


def _redact_fastapi_validation(error: BaseException) -> None:
    """FastAPI's ``ValidationException`` (``ResponseValidationError``...): its text lists
    its errors whole, ``input`` and ``ctx`` included; they are plain dicts, masked here."""
    errors = [_masked_issue(issue) for issue in error._errors]  # type: ignore[attr-defined]
    error._errors = errors  # type: ignore[attr-defined]
    if error.args:
        error.args = (errors,)
    if getattr(error, "body", None) is not None:
        error.body = None  # type: ignore[attr-defined]  # the response or request content


def _masked_issue(issue: object) -> object:
    if not isinstance(issue, Mapping):
        return HIDDEN
    masked = dict(issue)
    if "input" in masked:
        masked["input"] = HIDDEN
    if isinstance(masked.get("ctx"), Mapping):
        masked["ctx"] = {key: HIDDEN for key in masked["ctx"]}
    if masked.get("type") in _AUTHORED_MESSAGES and isinstance(masked.get("msg"), str):
        masked["msg"] = redact_quoted(masked["msg"].partition(", ")[0]) + f", {HIDDEN}"
    return masked
