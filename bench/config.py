"""Names, addresses and defaults shared by the harness and the contender apps."""

from __future__ import annotations

import os
from typing import Final

PG_HOST: Final = os.environ.get("BENCH_PG_HOST", "127.0.0.1")
PG_PORT: Final = int(os.environ.get("BENCH_PG_PORT", "5432"))
PG_USER: Final = os.environ.get("BENCH_PG_USER", "postgres")
# The database that always exists, used only to create ours.
BOOTSTRAP_DB: Final = os.environ.get("BENCH_BOOTSTRAP_DB", "test")
BENCH_DB: Final = os.environ.get("BENCH_DB", "bench")

ASYNCPG_DSN: Final = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{BENCH_DB}"
SQLALCHEMY_URL: Final = f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{BENCH_DB}"
BOOTSTRAP_DSN: Final = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{BOOTSTRAP_DB}"

# The timed endpoints by name: TechEmpower's database tests, 20 rows where a count is asked.
ENDPOINTS: Final = {
    "db": "/db",
    "queries": "/queries?queries=20",
    "fortunes": "/fortunes",
    "updates": "/updates?queries=20",
}
WORLD_ROWS: Final = 10_000
MAX_QUERIES: Final = 500
DEFAULT_POOL: Final = 32

# Every server the harness starts tags its connections with this application_name plus the
# contender's name, so that counts ignore anyone else's connections to the same database.
APP_NAME_PREFIX: Final = f"bench-{os.getpid()}-"
# SQL that counts one server's connections ($2 = its application_name).
COUNT_APP_CONNECTIONS_SQL: Final = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
    "AND backend_type = 'client backend' AND application_name = $2"
)
PORT_BASE: Final = int(os.environ.get("BENCH_PORT_BASE", "8100"))
