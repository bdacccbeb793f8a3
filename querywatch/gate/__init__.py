"""The query gate for CI: statements per test captured from psycopg, a committed baseline, rules.

``baseline`` (file format, pure), ``rules`` (pure checks), ``capture`` (psycopg instrumentation),
``plans`` (generic plans), ``plugin`` (pytest), ``commands`` (`querywatch gate record|check`).
"""
