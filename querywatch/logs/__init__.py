"""PostgreSQL server logs: formats, reading, parsing into events, and a bounded summary."""
