"""``bench.run --gc-freeze``: a contender's app, with ``gc.freeze()`` once it has started.

Every object alive after startup (the imported modules, the app, its pools) moves out
of the collector's reach, as services that freeze after startup have it: the full
collections that objects surviving a while (spans waiting in a batch) set off then
walk only what was allocated since. The app is named by ``BENCH_FROZEN_APP``.
"""

from __future__ import annotations

import gc
import importlib
import os

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["app"]

_module, _, _name = os.environ["BENCH_FROZEN_APP"].partition(":")
_inner: ASGIApp = getattr(importlib.import_module(_module), _name)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "lifespan":
        await _inner(scope, receive, send)
        return

    async def send_then_freeze(message: Message) -> None:
        if message["type"] == "lifespan.startup.complete":
            gc.collect()
            gc.freeze()
        await send(message)

    await _inner(scope, receive, send_then_freeze)
