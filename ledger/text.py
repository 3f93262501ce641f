"""What text the ledger accepts: owner names and Idempotency-Keys.

Each rule is one regular expression, published in the OpenAPI as the field's pattern,
and a validator that accepts exactly what the expression matches, so generated clients
and the service agree. The character classes are spelled as explicit code point ranges:
JSON Schema's ECMA-262 expressions, Python's ``re`` and Rust's ``regex`` disagree on what
``\\s`` means.
"""

from __future__ import annotations

import re

__all__ = [
    "IDEMPOTENCY_KEY_PATTERN",
    "OWNER_PATTERN",
    "check_idempotency_key",
    "check_owner",
]


def _class(ranges: list[tuple[int, int]]) -> str:
    return "".join(
        f"\\u{low:04x}" if low == high else f"\\u{low:04x}-\\u{high:04x}" for low, high in ranges
    )


def _contains(ranges: list[tuple[int, int]], char: str) -> bool:
    return any(low <= ord(char) <= high for low, high in ranges)


# C0 and C1 controls (NUL, tab, newline, DEL, ...) and the two Unicode line separators:
# nothing a name needs, and NUL is refused by PostgreSQL itself.
_CONTROL = [(0x00, 0x1F), (0x7F, 0x9F), (0x2028, 0x2029)]
# Unicode's White_Space property.
_WHITESPACE = [
    (0x09, 0x0D),
    (0x20, 0x20),
    (0x85, 0x85),
    (0xA0, 0xA0),
    (0x1680, 0x1680),
    (0x2000, 0x200A),
    (0x2028, 0x2029),
    (0x202F, 0x202F),
    (0x205F, 0x205F),
    (0x3000, 0x3000),
]
_EDGE = _class(_CONTROL + _WHITESPACE)
OWNER_PATTERN = f"^[^{_EDGE}](?:[^{_class(_CONTROL)}]*[^{_EDGE}])?$"
_OWNER = re.compile(OWNER_PATTERN)

# Printable ASCII, spaces only inside: keys travel in an HTTP header (latin-1 octets), and
# MariaDB's PAD SPACE collations would make "k" and "k " the same key where PostgreSQL
# and SQLite keep them apart.
_PRINTABLE_ASCII = [(0x20, 0x7E)]
_VISIBLE_ASCII = [(0x21, 0x7E)]
IDEMPOTENCY_KEY_PATTERN = (
    f"^[{_class(_VISIBLE_ASCII)}](?:[{_class(_PRINTABLE_ASCII)}]*[{_class(_VISIBLE_ASCII)}])?$"
)
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


def check_owner(value: str) -> str:
    """``value`` if it is an acceptable owner name; otherwise ValueError naming the rule."""
    if _OWNER.fullmatch(value):
        return value
    for position, char in enumerate(value):
        if _contains(_CONTROL, char):
            raise ValueError(
                "owner must not contain control characters or line separators"
                f" (U+{ord(char):04X} at position {position})"
            )
    if all(_contains(_WHITESPACE, char) for char in value):
        raise ValueError("owner must not be blank")
    raise ValueError("owner must not start or end with whitespace")


def check_idempotency_key(value: str) -> str:
    """``value`` if it is an acceptable Idempotency-Key; otherwise ValueError naming the rule."""
    if _IDEMPOTENCY_KEY.fullmatch(value):
        return value
    if not value:
        raise ValueError("Idempotency-Key must not be empty")
    for position, char in enumerate(value):
        if not _contains(_PRINTABLE_ASCII, char):
            # Header values arrive as latin-1, one character per octet sent.
            raise ValueError(
                "Idempotency-Key must be printable ASCII"
                f" (octet 0x{ord(char):02X} at position {position})"
            )
    raise ValueError("Idempotency-Key must not start or end with a space")
