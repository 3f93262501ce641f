"""The ledger's JSON reader: standard JSON as Python reads it, numbers exactly, the rest refused."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.json_body import loads
from ledger.schemas import MAX_CENTS

_INTEGERS = st.one_of(
    st.sampled_from([0, 1, -1, 2**52, MAX_CENTS - 1, MAX_CENTS, MAX_CENTS + 1, 2**63, 2**64]),
    st.integers(min_value=-(10**30), max_value=10**30),
)


@st.composite
def _notations(draw: st.DrawFn) -> tuple[int, str]:
    """An integer and one of the ways JSON can write it: 2.46e2, 24600.00E-2, 246.0, ..."""
    value = draw(_INTEGERS)
    exponent = draw(st.integers(min_value=-5, max_value=5))
    padding = draw(st.integers(min_value=0, max_value=3))
    # Shift the decimal point exactly: Decimal.scaleb rounds to the context's 28 digits.
    sign, digits, power = Decimal(value).as_tuple()
    mantissa = format(Decimal((sign, digits, int(power) - exponent)), "f")
    if padding:
        mantissa += ("" if "." in mantissa else ".") + "0" * padding
    marker = draw(st.sampled_from(["e", "E"])) + (
        "+" if exponent >= 0 and draw(st.booleans()) else ""
    )
    if exponent == 0 and draw(st.booleans()):
        return value, mantissa
    return value, f"{mantissa}{marker}{exponent}"


@given(_notations())
def test_an_integral_number_reads_as_that_exact_int_whatever_its_notation(
    case: tuple[int, str],
) -> None:
    value, literal = case

    read = loads(f'{{"n": {literal}}}'.encode())["n"]

    assert type(read) is int
    assert read == value


@given(
    whole=_INTEGERS,
    fraction=st.text(alphabet="0123456789", min_size=1, max_size=20).filter(
        lambda digits: digits.strip("0")
    ),
)
def test_a_number_with_a_fraction_never_reads_as_an_int(whole: int, fraction: str) -> None:
    # Past 2**53 a float rounds 9007199254740990.5 to a whole number; the reader does not.
    read = loads(f"{whole}.{fraction}".encode())

    assert type(read) is float


_JSON = st.recursive(
    st.none() | st.booleans() | _INTEGERS | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(_JSON)
def test_standard_json_without_fractions_reads_as_pythons_json_reads_it(document: Any) -> None:
    encoded = json.dumps(document).encode()

    assert loads(encoded) == json.loads(encoded)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b'{"n": NaN}', "NaN is not a JSON value", id="nan"),
        pytest.param(b'{"n": -Infinity}', "-Infinity is not a JSON value", id="infinity"),
        pytest.param(b'{"n": 1e400}', "out of range", id="float-overflow"),
        pytest.param(b'{"n": 1e999999999}', "out of range", id="huge-exponent"),
        pytest.param(b'{"n": ' + b"9" * 401 + b"}", "out of range", id="long-integer"),
        pytest.param(b'{"n": 1' + b"0" * 400 + b".5}", "out of range", id="long-fraction"),
        pytest.param(b'{"owner": "\\ud800"}', "lone UTF-16 surrogate", id="lone-surrogate"),
        pytest.param(b'{"\\udfff": 1}', "lone UTF-16 surrogate", id="surrogate-key"),
        pytest.param(b'[[["\\ud83d"]]]', "lone UTF-16 surrogate", id="nested-surrogate"),
        pytest.param(b'{"owner": "\xff"}', "not UTF-8", id="not-utf8"),
        pytest.param(b'{"n": 1e9999999999999999999999}', "out of range", id="past-decimal"),
        pytest.param(b'{"n": 1e-9999999999999999999999}', "out of range", id="tiny-past-decimal"),
        pytest.param(b'{"n": 1, "n": 2}', "same key more than once", id="repeated-key"),
        pytest.param(b'[{"a": {"b": 1, "b": 1}}]', "same key more than once", id="nested-repeat"),
    ],
)
def test_what_standard_json_does_not_allow_is_a_json_error(body: bytes, reason: str) -> None:
    with pytest.raises(json.JSONDecodeError, match=reason):
        loads(body)


def test_a_surrogate_pair_reads_as_its_character() -> None:
    assert loads(b'"\\ud83d\\ude00"') == "😀"


@given(
    mantissa=st.sampled_from(["0", "-0", "0.0", "-0.000", "0.00"]),
    exponent=st.integers(min_value=-(10**30), max_value=10**30),
    marker=st.sampled_from(["e", "E", "e+", "E-"]),
)
def test_a_zero_is_zero_whatever_its_exponent(mantissa: str, exponent: int, marker: str) -> None:
    if marker.endswith(("+", "-")):
        exponent = abs(exponent)

    read = loads(f"{mantissa}{marker}{exponent}".encode())

    assert type(read) is int
    assert read == 0
