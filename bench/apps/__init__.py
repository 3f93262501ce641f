"""The contender applications, each a FastAPI app module served by uvicorn."""
