"""The three contenders: which app module, which port, which environment."""

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


def _pool_env(pool: int) -> dict[str, dict[str, str]]:
    size = str(pool)
    return {
        "asyncpg": {"POOL": size},
        "recipe": {"POOL": size, "POOL_OVERFLOW": "0"},
        # Reads and writes each get the same count as the others' single pool, no overflow.
        "asyncdb": {
            "DB_POOL_SIZE": size,
            "DB_MAX_OVERFLOW": "0",
            "DB_READ_POOL_SIZE": size,
            "DB_READ_MAX_OVERFLOW": "0",
        },
    }


_APPS: Final = {
    "asyncpg": ("bench.apps.asyncpg_app:app", PORT_BASE),
    "recipe": ("bench.apps.recipe_app:app", PORT_BASE + 1),
    "asyncdb": ("bench.apps.asyncdb_app:app", PORT_BASE + 2),
}
ALL_CONTENDERS: Final = tuple(_APPS)


def contender(name: str, pool: int, extra_env: dict[str, str] | None = None) -> Contender:
    app, port = _APPS[name]
    application_name = APP_NAME_PREFIX + name
    env = {
        "DATABASE_URL": SQLALCHEMY_URL,
        # fastapi-asyncdb reads DB_APPLICATION_NAME; the other two apps read BENCH_APP_NAME.
        "DB_APPLICATION_NAME": application_name,
        "BENCH_APP_NAME": application_name,
        **_pool_env(pool)[name],
        **(extra_env or {}),
    }
    return Contender(name=name, app=app, port=port, env=env, application_name=application_name)


# Settings inherited from the caller's shell would silently change a contender's
# configuration ("default settings" for fastapi-asyncdb): they are dropped.
_SETTING_PREFIXES: Final = ("DB_", "DATABASE_URL", "POOL", "BENCH_APP_NAME", "BENCH_GC_THRESHOLD")


def server_environment(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
    python_path = [str(REPO_ROOT), str(LIBRARY_SRC)]
    if env.get("PYTHONPATH"):
        python_path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(python_path)
    env.update(extra)
    return env
