"""The demo's shop: customers, products, orders (1M+) and order items, loaded set-based in seconds.

Skew is realistic enough for plans to matter: a few products sell far more than others (a power
law over product ids), and a small share of customers places most of the orders.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

SCHEMA = """
DROP TABLE IF EXISTS order_items, orders, carts, products, customers CASCADE;
CREATE TABLE customers (
    id bigint PRIMARY KEY,
    email text NOT NULL,
    name text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE products (
    id bigint PRIMARY KEY,
    sku text NOT NULL UNIQUE,
    name text NOT NULL,
    price_cents int NOT NULL,
    stock int NOT NULL
);
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL,
    status text NOT NULL,
    total_cents int NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE order_items (
    order_id bigint NOT NULL,
    line int NOT NULL,
    product_id bigint NOT NULL,
    quantity int NOT NULL,
    price_cents int NOT NULL,
    PRIMARY KEY (order_id, line)
);
CREATE TABLE carts (
    id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL,
    product_id bigint NOT NULL,
    quantity int NOT NULL,
    added_at timestamptz NOT NULL DEFAULT now()
)
"""

LOAD_CUSTOMERS = """
INSERT INTO customers
SELECT g, 'customer' || g || '@example.com', 'Customer ' || g,
       now() - mod(g, 1000) * interval '1 day'
FROM generate_series(1, %(customers)s) g
"""

LOAD_PRODUCTS = """
INSERT INTO products
SELECT g, 'SKU-' || lpad(g::text, 6, '0'), 'Product ' || g, 199 + mod(g * 37, 9800), 1000
FROM generate_series(1, %(products)s) g
"""

# Customers by a power law: low ids order most; products likewise.
LOAD_ORDERS = """
INSERT INTO orders
SELECT g,
       1 + floor(%(customers)s * power(random(), 3))::bigint,
       (ARRAY['paid', 'shipped', 'delivered', 'delivered', 'delivered'])[1 + mod(g, 5)],
       0,
       now() - mod(g, 720) * interval '1 hour'
FROM generate_series(1, %(orders)s) g
"""

LOAD_ITEMS = """
INSERT INTO order_items
SELECT o.id, l, 1 + floor(%(products)s * power(random(), 2))::bigint, 1 + mod(o.id + l, 3), 0
FROM orders o, generate_series(1, 1 + mod(o.id, 4)::int) l
WHERE o.id <= %(orders_with_items)s
"""

INDEXES = """
CREATE INDEX orders_customer_created ON orders (customer_id, created_at DESC);
CREATE INDEX order_items_product ON order_items (product_id);
ANALYZE customers;
ANALYZE products;
ANALYZE orders;
ANALYZE order_items
"""

# Load tables and indexes into shared_buffers, so query costs are steady from the first minute
# (a cold cache makes every statement look slower at first, then faster: noise for the story).
PREWARM = """
CREATE EXTENSION IF NOT EXISTS pg_prewarm;
SELECT pg_prewarm(c.oid::regclass)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i')
"""


COUNT = sql.SQL("SELECT count(*) FROM {}")


@dataclass(frozen=True)
class ShopSize:
    customers: int = 100_000
    products: int = 5_000
    orders: int = 1_000_000
    orders_with_items: int = 300_000


@dataclass(frozen=True)
class Loaded:
    seconds: float
    rows: dict[str, int]


def load(dsn: str, size: ShopSize = ShopSize()) -> Loaded:
    """Create and fill the shop schema; returns how long it took and the row counts."""
    started = time.monotonic()
    params = {
        "customers": size.customers,
        "products": size.products,
        "orders": size.orders,
        "orders_with_items": size.orders_with_items,
    }
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '256MB'")
        _run_script(conn, SCHEMA)
        for statement in (LOAD_CUSTOMERS, LOAD_PRODUCTS, LOAD_ORDERS, LOAD_ITEMS):
            conn.execute(statement, params)
        _run_script(conn, INDEXES)
        _run_script(conn, PREWARM)
        rows = {t: _count(conn, t) for t in ("customers", "products", "orders", "order_items")}
    return Loaded(time.monotonic() - started, rows)


def _count(conn: psycopg.Connection[tuple[Any, ...]], table: str) -> int:
    row = conn.execute(COUNT.format(sql.Identifier(table))).fetchone()
    return int(row[0]) if row else 0


def _run_script(conn: psycopg.Connection[tuple[object, ...]], script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)
