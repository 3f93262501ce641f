"""Fault-injection bank test for the ``ledger`` reference service (see chaos/README.md)."""
