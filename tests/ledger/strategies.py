"""Hypothesis strategies for the ledger's inputs, weighted towards their edges."""

from __future__ import annotations

from hypothesis import strategies as st

from ledger.schemas import MAX_CENTS, MAX_ID
from ledger.text import OWNER_PATTERN

# The two halves /accounts/total sums separately, and where one carries into the other.
HALF_EDGES = [2**32 - 1, 2**32, 2**32 + 1]

balances = st.one_of(
    st.sampled_from([0, 1, 2, *HALF_EDGES, MAX_CENTS - 1, MAX_CENTS]),
    st.integers(min_value=0, max_value=MAX_CENTS),
)
"""Balances an account may be opened with."""

out_of_range_cents = st.one_of(
    st.sampled_from([-1, MAX_CENTS + 1, 2**53, 2**63 - 1, 2**63, 2**64, -(2**63) - 1]),
    st.integers(max_value=-1),
    st.integers(min_value=MAX_CENTS + 1),
)
"""Numbers no balance or amount may be: negative, or past MAX_CENTS (and past 2**63)."""


def amounts_around(*pivots: int) -> st.SearchStrategy[int]:
    """Valid amounts at and beside each pivot (a balance, a headroom), the ends, and any."""
    near = {pivot + step for pivot in pivots for step in (-1, 0, 1)}
    edges = sorted(amount for amount in near | {1, MAX_CENTS} if 1 <= amount <= MAX_CENTS)
    return st.one_of(st.sampled_from(edges), st.integers(min_value=1, max_value=MAX_CENTS))


unknown_ids = st.integers(min_value=MAX_ID - 2**20, max_value=MAX_ID)
"""Ids inside the column's range, far past any a test opens."""

ids_out_of_range = st.one_of(
    st.sampled_from([0, -1, MAX_ID + 1, 2**63]), st.integers(min_value=MAX_ID + 1)
)

# Names are drawn from the published pattern itself, so every one must be accepted.
owners = st.from_regex(OWNER_PATTERN, fullmatch=True).filter(lambda owner: len(owner) <= 200)

_VISIBLE_ASCII = st.characters(min_codepoint=0x21, max_codepoint=0x7E)


KEY_PREFIX_LENGTH = 16
key_tails = st.text(alphabet=_VISIBLE_ASCII, max_size=200 - KEY_PREFIX_LENGTH)
"""What follows a unique prefix of KEY_PREFIX_LENGTH characters, up to the 200 allowed."""
