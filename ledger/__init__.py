"""ledger: the reference money-transfer service built on fastapi-asyncdb's public API."""
