"""Real servers the tests start for themselves: PgBouncer, TLS PostgreSQL, TLS MariaDB."""
