"""querywatch: find the SQL query that is taking PostgreSQL down, say why, prove the fix."""

__version__ = "0.1.0"
