"""Contract tests of the ledger service, on every database backend."""
