"""Liveness, readiness and pool state routes, with models so OpenAPI documents them."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, Response

from ..database import Database
from .problems import PROBLEM_JSON, Problem

__all__ = ["Liveness", "PoolStatus", "Readiness", "health_router"]


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class PoolStatus(BaseModel):
    """One role's pool, as the library counts it; reading it never touches the database."""

    reachable: bool = Field(description="False while the breaker fails requests fast.")
    saturated: bool = Field(description="Every slot in use and requests waiting: busy, not down.")
    in_use: int = Field(description="Units of work admitted now.")
    capacity: int = Field(description="Units of work admitted at most at once.")
    waiting: int = Field(description="Units of work waiting for a slot.")
    checked_out: int = Field(description="Connections lent to units of work.")
    idle: int = Field(description="Connections open and ready.")


class Readiness(BaseModel):
    """Whether this instance should get traffic: the database answers, and it is not draining.

    A saturated pool is reported but keeps the instance ready: it is busy, and pulling
    it would only load the others more.
    """

    status: Literal["ok", "unavailable", "draining"]
    reachable: bool
    saturated: bool
    pools: dict[str, PoolStatus]


def health_router(database: Database, *, retry_after: int) -> APIRouter:
    router = APIRouter(tags=["health"])
    unavailable: dict[int | str, dict[str, Any]] = {
        503: {
            "model": Readiness,
            "description": "The database does not answer, or the service is shutting down",
        },
    }
    problem: dict[int | str, dict[str, Any]] = {
        503: {"model": Problem, "content": {PROBLEM_JSON: {}}},
    }

    @router.get("/live", response_model=Liveness)
    async def live() -> Liveness:
        """Liveness: the process answers. Never touches the database."""
        return Liveness()

    @router.get("/ready", response_model=Readiness, responses=unavailable)
    async def ready() -> Response:
        """Readiness: the database answers a ping on the probe's own connection.

        503 while the database drains at shutdown, so load balancers stop sending traffic.
        """
        report = Readiness.model_validate(await database.check_health())
        if report.status != "ok":
            return JSONResponse(
                report.model_dump(mode="json"),
                status_code=503,
                headers={"Retry-After": str(retry_after)},
            )
        return JSONResponse(report.model_dump(mode="json"))

    @router.get(
        "/pools",
        response_model=dict[str, PoolStatus],
        responses=problem,
    )
    async def pools() -> dict[str, PoolStatus]:
        """Each pool's state; never touches the database."""
        return {
            name: PoolStatus.model_validate(status)
            for name, status in database.pool_status().items()
        }

    return router
