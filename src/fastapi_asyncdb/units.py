"""A unit of work on the primary: a session on an admitted connection, ended exactly once.

``Database.transaction()`` begins and ends one around a block; ``SessionDep`` begins one
for a request and ends it when the response starts, once its status is known.
"""

from __future__ import annotations

import contextlib
from time import perf_counter

from sqlalchemy.ext.asyncio import AsyncSession

from .role import AdmittedConnection, Role

__all__ = ["TransactionUnit"]


class TransactionUnit:
    """Begin, then end with a commit or a rollback; the connection is given back either way."""

    __slots__ = ("_admitted", "_role", "_session", "_started")

    def __init__(self, role: Role) -> None:
        self._role = role
        self._started = 0.0
        self._admitted: AdmittedConnection | None = None
        self._session: AsyncSession | None = None

    @property
    def session(self) -> AsyncSession:
        if self._session is None:
            raise RuntimeError("the unit of work has not begun, or has ended")
        return self._session

    async def begin(self) -> AsyncSession:
        admitted = self._role.connection()
        connection = await admitted.__aenter__()
        self._admitted = admitted
        self._session = self._role.session(connection)
        self._started = perf_counter()
        return self._session

    async def end(self, *, commit: bool) -> None:
        """Commit (or roll back), close the session, give the connection back.

        A failing commit raises after the rollback and the return; a second call does
        nothing. The connection is given back even if the caller is cancelled meanwhile.
        """
        session, admitted = self._session, self._admitted
        self._session = self._admitted = None
        if session is None or admitted is None:
            return
        outcome = "error"
        try:
            try:
                if commit:
                    await session.commit()
                else:
                    await session.rollback()
                outcome = "commit" if commit else "rollback"
            except BaseException:
                # The first failure is the one to report; the connection may be gone.
                with contextlib.suppress(Exception):
                    await session.rollback()
                raise
            finally:
                await session.close()
        finally:
            elapsed = perf_counter() - self._started
            await admitted.__aexit__(None, None, None)
            if self._role.metrics is not None:
                self._role.metrics.unit("write", outcome, elapsed)
