"""The contenders: which app module, which port, which environment.

| name | app | what it is |
|---|---|---|
| asyncpg | apps/asyncpg_app.py | raw SQL on an asyncpg pool: the physical limit |
| recipe | apps/recipe_app.py | hand-written SQLAlchemy, the usual recipe: the floor |
| default | apps/default_app.py | fastapi-asyncdb the default way (ORM, sessions) |
| fast | apps/fast_app.py | fastapi-asyncdb the fast way (``Prepared``, ``run_statement``) |
| traced | apps/traced_app.py | the fast way, traced by OpenTelemetry's SQLAlchemy instrumentation |
| asyncpg_traced | apps/asyncpg_traced_app.py | asyncpg, traced by its OTel instrumentation |
| traced_fallback | apps/traced_fallback_app.py | ``traced`` through SQLAlchemy (a listener) |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench.config import APP_NAME_PREFIX, PORT_BASE, SQLALCHEMY_URL

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
# The library under test lives in src/ and may not be installed into the venv.
LIBRARY_SRC: Final = REPO_ROOT / "src"


@dataclass(frozen=True)
class Contender:
    name: str
    app: str  # uvicorn "module:attribute"
    port: int
    # Environment variables set for the server on top of the harness's own.
    env: dict[str, str]
    application_name: str  # tags the server's connections in pg_stat_activity

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _pool_env(name: str, pool: int) -> dict[str, str]:
    size = str(pool)
    if name in ("asyncpg", "asyncpg_traced"):
        return {"POOL": size}
    if name == "recipe":
        return {"POOL": size, "POOL_OVERFLOW": "0"}
    # fastapi-asyncdb: reads and writes each get the same count as the others' single
    # pool, no overflow.
    return {
        "DB_POOL_SIZE": size,
        "DB_MAX_OVERFLOW": "0",
        "DB_READ_POOL_SIZE": size,
        "DB_READ_MAX_OVERFLOW": "0",
    }


_APPS: Final = {
    name: (f"bench.apps.{name}_app:app", PORT_BASE + offset)
    for offset, name in enumerate(
        ("asyncpg", "recipe", "default", "fast", "traced", "asyncpg_traced", "traced_fallback")
    )
}
# Those that run fastapi-asyncdb (and read its DB_ settings).
LIBRARY_CONTENDERS: Final = ("default", "fast", "traced", "traced_fallback")
ALL_CONTENDERS: Final = tuple(_APPS)


def contender(name: str, pool: int, extra_env: dict[str, str] | None = None) -> Contender:
    app, port = _APPS[name]
    application_name = APP_NAME_PREFIX + name
    env = {
        "DATABASE_URL": SQLALCHEMY_URL,
        # fastapi-asyncdb reads DB_APPLICATION_NAME; the other apps read BENCH_APP_NAME.
        "DB_APPLICATION_NAME": application_name,
        "BENCH_APP_NAME": application_name,
        **_pool_env(name, pool),
        **(extra_env or {}),
    }
    return Contender(name=name, app=app, port=port, env=env, application_name=application_name)


# Settings inherited from the caller's shell would silently change a contender's
# configuration ("default settings" for fastapi-asyncdb): they are dropped.
_SETTING_PREFIXES: Final = (
    "DB_", "DATABASE_URL", "POOL", "BENCH_APP_NAME", "BENCH_GC_THRESHOLD", "BENCH_GC_FREEZE",
)  # fmt: skip


def server_environment(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
    python_path = [str(REPO_ROOT), str(LIBRARY_SRC)]
    if env.get("PYTHONPATH"):
        python_path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(python_path)
    env.update(extra)
    return env
