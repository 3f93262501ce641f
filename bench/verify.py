"""Check a running contender's answers against TechEmpower's rules before it is timed.

Every check reads the truth straight from the database, not from another contender.
Run alone: .venv/bin/python -m bench.verify http://127.0.0.1:8100
"""

from __future__ import annotations

import asyncio
import html
import re
import sys
from typing import Any, Final

import asyncpg
import httpx

from bench.apps.common import ADDITIONAL_FORTUNE
from bench.config import MAX_QUERIES, WORLD_ROWS
from bench.pg import connect

JAPANESE_FORTUNE: Final = "フレームワークのベンチマーク"
SCRIPT_FORTUNE: Final = (
    '<script>alert("This should not be displayed in a browser alert box.");</script>'
)
# Raw `queries` value -> rows expected; None means the parameter is left out.
CLAMPING_CASES: Final[tuple[tuple[str | None, int], ...]] = (
    (None, 1), ("", 1), ("foo", 1), ("0", 1), ("1", 1), ("20", 20), ("501", MAX_QUERIES),
)  # fmt: skip
_ROW_PATTERN: Final = re.compile(r"<tr><td>(\d+)</td><td>(.*?)</td></tr>", re.DOTALL)


class Checker:
    def __init__(self, client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
        self.client = client
        self.db = db
        self.failures: list[str] = []

    def expect(self, condition: bool, message: str) -> bool:
        if not condition:
            self.failures.append(message)
        return condition

    async def get(self, path: str, params: dict[str, str] | None = None) -> httpx.Response | None:
        response = await self.client.get(path, params=params)
        if not self.expect(
            response.status_code == 200, f"GET {response.url}: HTTP {response.status_code}"
        ):
            return None
        return response

    async def json_of(self, path: str, params: dict[str, str] | None = None) -> Any:
        response = await self.get(path, params)
        if response is None:
            return None
        content_type = response.headers.get("content-type", "")
        self.expect(
            content_type.startswith("application/json"), f"{path}: content-type {content_type!r}"
        )
        return response.json()

    def world_shape(self, where: str, row: Any) -> bool:
        if not self.expect(
            isinstance(row, dict) and set(row) == {"id", "randomNumber"}, f"{where}: row {row!r}"
        ):
            return False
        for key in ("id", "randomNumber"):
            value = row[key]
            # bool is an int subclass; a JSON true would pass a plain isinstance check.
            if not self.expect(
                type(value) is int and 1 <= value <= WORLD_ROWS, f"{where}: {key} {value!r}"
            ):
                return False
        return True

    async def matches_database(self, where: str, rows: list[dict[str, int]]) -> None:
        stored = dict(
            await self.db.fetch(
                "SELECT id, randomnumber FROM world WHERE id = ANY($1::int[])",
                [row["id"] for row in rows],
            )
        )
        for row in rows:
            row_id, answered = row["id"], row["randomNumber"]
            self.expect(
                stored.get(row_id) == answered,
                f"{where}: id {row_id} answered {answered}, stored {stored.get(row_id)}",
            )

    async def check_single(self) -> None:
        for _ in range(5):
            row = await self.json_of("/db")
            if row is not None and self.world_shape("/db", row):
                await self.matches_database("/db", [row])

    async def check_list(self, path: str) -> list[dict[str, int]]:
        """Clamping cases; returns the 20-row answer for further checks."""
        twenty: list[dict[str, int]] = []
        for raw, expected in CLAMPING_CASES:
            rows = await self.json_of(path, None if raw is None else {"queries": raw})
            where = f"{path}?queries={raw}"
            if rows is None or not self.expect(isinstance(rows, list), f"{where}: not a list"):
                continue
            self.expect(len(rows) == expected, f"{where}: {len(rows)} rows, expected {expected}")
            if all(self.world_shape(where, row) for row in rows) and raw == "20":
                twenty = rows
        return twenty

    async def check_queries(self) -> None:
        rows = await self.check_list("/queries")
        if rows:
            await self.matches_database("/queries?queries=20", rows)

    async def check_updates(self) -> None:
        await self.check_list("/updates")
        # A dedicated call read back at once: a later clamping call could overwrite its rows.
        before = dict(await self.db.fetch("SELECT id, randomnumber FROM world"))
        rows = await self.json_of("/updates", {"queries": "20"})
        where = "/updates?queries=20"
        if not isinstance(rows, list) or not all(self.world_shape(where, row) for row in rows):
            self.expect(False, f"{where}: not a list of rows")
            return
        self.expect(len({row["id"] for row in rows}) == len(rows) == 20, f"{where}: ids {rows!r}")
        # Read back after the answer: the write must be committed before the response.
        await self.matches_database(f"{where} (read back)", rows)
        changed = sum(before[row["id"]] != row["randomNumber"] for row in rows)
        # Twenty new values 1..10000 all equal to the old ones: odds 1e-80.
        self.expect(changed > 0, f"{where}: no row changed")

    async def check_fortunes(self) -> None:
        response = await self.get("/fortunes")
        if response is None:
            return
        content_type = response.headers.get("content-type", "").replace(" ", "").lower()
        self.expect(
            content_type == "text/html;charset=utf-8", f"/fortunes: content-type {content_type!r}"
        )
        body = response.content
        self.expect(
            JAPANESE_FORTUNE.encode("utf-8") in body, "/fortunes: Japanese text not in UTF-8"
        )
        text = body.decode("utf-8", errors="replace")
        self.expect("<script>" not in text, "/fortunes: <script> not escaped")
        self.expect("&lt;script&gt;" in text, "/fortunes: escaped <script> missing")
        found = [(int(i), html.unescape(message)) for i, message in _ROW_PATTERN.findall(text)]
        stored = [
            (r["id"], r["message"]) for r in await self.db.fetch("SELECT id, message FROM fortune")
        ]
        expected = sorted([*stored, (0, ADDITIONAL_FORTUNE)], key=lambda pair: pair[1])
        self.expect(found == expected, f"/fortunes: rows {found!r}, expected {expected!r}")
        self.expect(
            any(message == SCRIPT_FORTUNE for _, message in found),
            "/fortunes: script fortune missing",
        )


async def verify(base_url: str) -> list[str]:
    """Return the broken rules; empty means the contender may be timed."""
    db = await connect()
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as client:
            checker = Checker(client, db)
            await checker.check_single()
            await checker.check_queries()
            await checker.check_fortunes()
            await checker.check_updates()
            return checker.failures
    finally:
        await db.close()


def main() -> int:
    base_url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8100"
    failures = asyncio.run(verify(base_url))
    for failure in failures:
        print("FAIL", failure)
    print("ok" if not failures else f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
