"""Reading a monitored PostgreSQL server: SQL per version, capabilities, the live source."""
