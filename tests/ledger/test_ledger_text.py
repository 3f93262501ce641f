"""Owner names and Idempotency-Keys: accepted exactly when the stated rules say so.

The rules are restated here from Unicode's own data (unicodedata, str.isspace) rather
than from ledger.text's code point tables, and compared on generated text, its edges
(controls, separators, every kind of space, astral characters) drawn often.
"""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.text import (
    IDEMPOTENCY_KEY_PATTERN,
    OWNER_PATTERN,
    check_idempotency_key,
    check_owner,
)

_EDGE_CHARACTERS = st.sampled_from(
    [
        "\x00", "\t", "\n", "\x1f", " ", "\x7f", "\x85", "\x9f", "\xa0", "\u1680", "\u2000",
        "\u200a", "\u200b", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000", "\ufeff",
        "a", "Z", "~", "é", "ß", "日", "😀", "\U0010fffd",
    ]
)  # fmt: skip
_TEXT = st.text(alphabet=st.one_of(_EDGE_CHARACTERS, st.characters()), max_size=12)


def _is_control(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Zl", "Zp")


def _owner_rule_broken(owner: str) -> str | None:
    if any(_is_control(char) for char in owner):
        return "control characters"
    if owner == "" or owner.isspace():
        return "blank"
    if owner[0].isspace() or owner[-1].isspace():
        return "start or end with whitespace"
    return None


@given(_TEXT)
def test_an_owner_is_accepted_exactly_when_no_rule_is_broken(owner: str) -> None:
    broken = _owner_rule_broken(owner)

    if broken is None:
        assert check_owner(owner) == owner
    else:
        with pytest.raises(ValueError, match=broken):
            check_owner(owner)


@given(_TEXT)
def test_the_published_owner_pattern_matches_what_the_validator_accepts(owner: str) -> None:
    # The OpenAPI's pattern is read by JSON Schema tools; it must say the same thing.
    assert (re.fullmatch(OWNER_PATTERN, owner) is not None) == (_owner_rule_broken(owner) is None)


def test_a_control_character_is_named_with_its_position() -> None:
    with pytest.raises(ValueError, match=r"U\+0000 at position 1"):
        check_owner("a\x00b")


_KEY_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from([" ", "\x00", "\t", "\x7f", "\x80", "é", "\xff", "a", "~", "!"]),
        st.characters(max_codepoint=0xFF),
    ),
    max_size=12,
)


def _key_rule_broken(key: str) -> str | None:
    if key == "":
        return "empty"
    if not all(char.isascii() and char.isprintable() for char in key):
        return "printable ASCII"
    if key[0] == " " or key[-1] == " ":
        return "start or end with a space"
    return None


@given(_KEY_TEXT)
def test_an_idempotency_key_is_accepted_exactly_when_no_rule_is_broken(key: str) -> None:
    broken = _key_rule_broken(key)

    if broken is None:
        assert check_idempotency_key(key) == key
    else:
        with pytest.raises(ValueError, match=broken):
            check_idempotency_key(key)
    assert (re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key) is not None) == (broken is None)


def test_a_non_ascii_key_is_named_by_the_octet_sent() -> None:
    # "é" sent as UTF-8 arrives as two latin-1 characters, the first being 0xC3.
    with pytest.raises(ValueError, match=r"octet 0xC3 at position 1"):
        check_idempotency_key("k" + "é".encode().decode("latin-1"))
