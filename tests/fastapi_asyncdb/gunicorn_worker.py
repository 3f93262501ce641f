"""The gunicorn worker class docs/operating.md recommends, as the shutdown tests run it.

``UvicornWorker`` gives uvicorn no graceful timeout: a worker waits for its requests
until gunicorn's ``--graceful-timeout``, when the master kills it outright and nothing
is drained. Bounding the wait inside the worker leaves time for the drain after it.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

# The package ships no type information.
from uvicorn_worker import UvicornWorker  # type: ignore[import-untyped]


class BoundedUvicornWorker(UvicornWorker):  # type: ignore[misc]
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        **UvicornWorker.CONFIG_KWARGS,
        "timeout_graceful_shutdown": int(os.environ.get("UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN", "15")),
    }
