"""Handing a connection to a project's Alembic env.py, and checking that it was used.

An env.py that connects by itself (Alembic's generic template: ``engine_from_config``
with alembic.ini's ``sqlalchemy.url``) would migrate some other database, and the
upgrade would then report "nothing to apply" on this one. While a connection is
handed over, ``sqlalchemy.url`` reads as a non-URL, so such an env.py fails before it
connects; and after each upgrade or downgrade, the database must be at the revision
asked for, resolved (``+1``, ``-1`` included) against its revision before the step.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError

from .errors import MigrationError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

__all__ = ["CONNECTION_KEY", "Target", "check_reached", "handing_over", "resolve_target"]

# The key Alembic's cookbook uses to hand a connection to env.py.
CONNECTION_KEY = "connection"

# What env.py gets for ``sqlalchemy.url`` while a connection is handed over: not a URL,
# so an env.py that connects by itself fails before it migrates some other database.
NOT_A_URL = "(fastapi-asyncdb hands over a connection: config.attributes['connection'])"
IGNORED_CONNECTION = (
    "the project's env.py did not use the connection fastapi-asyncdb passes to it: "
    "make env.py `from fastapi_asyncdb.migrations import run_migrations; "
    "run_migrations(Base.metadata)`, or configure Alembic with "
    "`connection=config.attributes['connection']` (docs/migrations.md)"
)

# Alembic's async template (``alembic init -t async``) calls asyncio.run in env.py, which
# cannot start inside the event loop that Database.migrate runs in.
OWN_EVENT_LOOP = (
    "the project's env.py starts its own event loop (asyncio.run, as `alembic init -t "
    "async` writes it), which cannot run inside fastapi-asyncdb's: make env.py "
    "`from fastapi_asyncdb.migrations import run_migrations; run_migrations(Base.metadata)` "
    "(docs/migrations.md)"
)


@contextlib.contextmanager
def handing_over(config: Config, connection: Connection) -> Iterator[None]:
    """Give env.py ``connection``, and no URL to connect anywhere else with."""
    section = config.config_ini_section
    had_url = config.get_section_option(section, "sqlalchemy.url")
    config.attributes[CONNECTION_KEY] = connection
    if not _names_the_same_database(had_url, connection.engine.url):
        # An ini URL naming this very database (the pytest plugin sets it) may stay.
        config.set_section_option(section, "sqlalchemy.url", NOT_A_URL)
    try:
        yield
    except ArgumentError as error:
        if "Could not parse SQLAlchemy URL" not in str(error):
            raise
        raise MigrationError(
            f"{IGNORED_CONNECTION}; it tried alembic.ini's sqlalchemy.url instead, and "
            "migrated nothing"
        ) from None
    except RuntimeError as error:
        if "cannot be called from a running event loop" not in str(error):
            raise
        _close_refused_coroutines(error)
        raise MigrationError(OWN_EVENT_LOOP) from None
    finally:
        config.attributes.pop(CONNECTION_KEY, None)
        if had_url is None:
            config.file_config.remove_option(section, "sqlalchemy.url")
        else:
            config.set_section_option(section, "sqlalchemy.url", had_url.replace("%", "%%"))


def _close_refused_coroutines(error: BaseException) -> None:
    # The coroutine env.py gave asyncio.run never ran: closed here, it is not reported
    # later as "never awaited" under the one-line error.
    frames = traceback.walk_tb(error.__traceback__)
    for frame, _ in frames:
        for value in frame.f_locals.values():
            if inspect.iscoroutine(value) and inspect.getcoroutinestate(value) == "CORO_CREATED":
                value.close()


def _names_the_same_database(given: str | None, url: URL) -> bool:
    if not given:
        return False
    try:
        other = make_url(given)
    except (ArgumentError, ValueError):
        return False
    where = (other.get_backend_name(), other.host, other.port, other.database)
    return where == (url.get_backend_name(), url.host, url.port, url.database)


@dataclass(frozen=True)
class Target:
    """Where a step must leave the database, resolved before it runs.

    ``revisions``: revisions that must be current (an upgrade: current or below the
    heads). ``exact``: the heads must be exactly ``revisions`` (a relative step, or a
    downgrade to base). ``None`` revisions: not resolvable (a relative step across a
    branch point); then the heads must at least change.
    """

    revision: str
    downgrade: bool
    revisions: frozenset[str] | None
    exact: bool


_RELATIVE = re.compile(r"^(?P<start>.*?)(?P<step>[+-]\d+)$")


def resolve_target(
    script: ScriptDirectory, revision: str, previous: tuple[str, ...], *, downgrade: bool
) -> Target:
    """``revision`` as the revision ids the database must be at after the step.

    Resolved against ``previous``, read before the step runs: a relative target (``+1``,
    ``-1``, ``ae10+2``) counts from there.
    """
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    relative = _RELATIVE.match(revision)
    try:
        if relative is not None:
            found = _walk(script, relative["start"], int(relative["step"]), previous)
            return Target(revision, downgrade, found, exact=found is not None)
        targets = frozenset(s.revision for s in script.get_revisions(revision) if s is not None)
    except (CommandError, RevisionError):
        # Alembic refuses it too, or a relative step across branches: checked loosely.
        return Target(revision, downgrade, None, exact=False)
    return Target(revision, downgrade, targets, exact=downgrade and not targets)


def _walk(
    script: ScriptDirectory, start: str, step: int, previous: tuple[str, ...]
) -> frozenset[str] | None:
    """The revision ``step`` revisions from ``start`` (or ``previous``) on a straight line."""
    if start:
        origin = tuple(s.revision for s in script.get_revisions(start) if s is not None)
    else:
        origin = previous
    if len(origin) > 1:
        return None
    here: str | None = origin[0] if origin else None
    for _ in range(abs(step)):
        if step > 0:
            following = (
                tuple(script.get_bases())
                if here is None
                else tuple(script.get_revision(here).nextrev)
            )
        elif here is None:
            return None  # below base: Alembic refuses it
        else:
            down = script.get_revision(here).down_revision
            following = (down,) if isinstance(down, str) else tuple(down or ())
            if not following:
                here = None
                continue
        if len(following) != 1:
            return None
        here = following[0]
    return frozenset() if here is None else frozenset({here})


def check_reached(
    script: ScriptDirectory, target: Target, previous: tuple[str, ...], current: tuple[str, ...]
) -> None:
    """Fail unless the step left the database where ``target`` says.

    An env.py that migrates elsewhere (its own URL, its own engine) leaves this database
    where it was, and the step would otherwise pass as "nothing to apply", or as done.
    """
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    step = "downgrade" if target.downgrade else "upgrade"
    if target.revisions is None:
        if set(current) != set(previous):
            return
        wanted = f"moved from {_names(previous)} by {target.revision}"
    elif target.exact:
        if set(current) == target.revisions:
            return
        wanted = f"at {_names(sorted(target.revisions))}"
    elif target.downgrade:
        if target.revisions <= set(current):
            return
        wanted = f"at {_names(sorted(target.revisions))}"
    else:
        try:
            reached = {s.revision for s in script.iterate_revisions(current or "base", "base")}
        except (CommandError, RevisionError):
            reached = set(current)
        if target.revisions <= reached:
            return
        wanted = f"at {_names(sorted(target.revisions))}"
    raise MigrationError(
        f"after the {step} this database is at {_names(current)}, not {wanted}: "
        f"{IGNORED_CONNECTION}"
    )


def _names(revisions: Sequence[str]) -> str:
    return ", ".join(revisions) if revisions else "(none)"
