"""Testing a FastAPI app on a real database: the pytest plugin and what its fixtures give.

The plugin (``fastapi_asyncdb.testing.plugin``) documents its fixtures and options.
"""

from .faults import DatabaseFaults
from .forwarder import Forwarder
from .lifespan import Lifespan, LifespanError
from .schema import Schema

__all__ = ["DatabaseFaults", "Forwarder", "Lifespan", "LifespanError", "Schema"]
