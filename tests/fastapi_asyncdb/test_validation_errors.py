"""pydantic's and FastAPI's validation errors, redacted: no input in what they print."""

from __future__ import annotations

import traceback

import pydantic
import pytest
from fastapi.exceptions import ResponseValidationError
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from fastapi_asyncdb.redaction import redact_exception
from fastapi_asyncdb.validation_errors import RedactedValidationError


@settings(max_examples=100, deadline=None)
@given(text=st.text())
def test_a_validation_error_prints_no_input_whatever_it_holds(text: str) -> None:
    # Marks no message of pydantic's or FastAPI's holds: any piece of the value shows.
    value = f"\u00ab{text}\u00bb"

    class Strict(BaseModel):
        count: int

        @pydantic.field_validator("count", mode="before")
        @classmethod
        def refuse(cls, raw: object) -> object:
            if raw == value:
                raise ValueError(f"{raw!r} is not a count")
            return raw

    for data in ({"count": value}, {"count": [value, {value: value}]}):
        try:
            Strict.model_validate(data)
        except pydantic.ValidationError as error:
            wrapped = ResponseValidationError(error.errors(), body=data)
            for item in (error, wrapped):
                redact_exception(item)
                printed = "".join(traceback.format_exception(item)) + repr(item)
                assert "\u00ab" not in printed
                assert "\u00bb" not in printed
        else:
            pytest.fail("the model accepted a value it refuses")


class Row(BaseModel):
    id: int
    age: int


def test_a_redacted_validation_error_keeps_the_model_count_locations_and_types() -> None:
    with pytest.raises(pydantic.ValidationError) as raised:
        Row.model_validate({"id": "x1", "age": "x2"})
    redact_exception(raised.value)
    assert isinstance(raised.value, RedactedValidationError)
    assert str(raised.value) == "2 validation errors for Row: id: int_parsing; age: int_parsing"
    assert [issue["loc"] for issue in raised.value.errors()] == [("id",), ("age",)]
    assert raised.value.errors(include_input=True)[0]["input"] == "x1"  # only when asked
