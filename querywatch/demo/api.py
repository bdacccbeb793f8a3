"""The demo's web API: product page, cart, checkout and order history, behind a feature flag.

``order_history_v2`` is the rollout of the story: the new code path looks the customer up by
e-mail once per order line (an N+1) with ``lower(email) = lower($1)``, which no index serves.
"""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException
from psycopg_pool import ConnectionPool
from pydantic import BaseModel

PRODUCT = "SELECT id, sku, name, price_cents, stock FROM products WHERE id = %s"
BEST_SELLERS = (  # "customers also bought": best sellers among a recent slice of orders
    "SELECT product_id, sum(quantity) AS sold FROM order_items "
    "WHERE order_id BETWEEN %s AND %s + 2000 GROUP BY product_id ORDER BY sold DESC LIMIT 5"
)
ADD_TO_CART = "INSERT INTO carts (customer_id, product_id, quantity) VALUES (%s, %s, %s)"
NEXT_ORDER_ID = "SELECT nextval('orders_id_seq')"
INSERT_ORDER = (
    "INSERT INTO orders (id, customer_id, status, total_cents, created_at) "
    "VALUES (%s, %s, 'paid', %s, now())"
)
INSERT_ITEM = (
    "INSERT INTO order_items (order_id, line, product_id, quantity, price_cents) "
    "VALUES (%s, %s, %s, %s, %s)"
)
PRICE = "SELECT price_cents FROM products WHERE id = %s"
CUSTOMER_BY_EMAIL = "SELECT id, name FROM customers WHERE lower(email) = lower(%s)"
RECENT_ORDERS = (
    "SELECT id, status, total_cents, created_at FROM orders "
    "WHERE customer_id = %s ORDER BY created_at DESC LIMIT 10"
)
ORDER_LINES = (
    "SELECT order_id, line, product_id, quantity FROM order_items "
    "WHERE order_id = ANY(%s) ORDER BY order_id, line"
)
CREATE_SEQUENCE = "CREATE SEQUENCE IF NOT EXISTS orders_id_seq START 5000000"


class CartLine(BaseModel):
    customer_id: int
    product_id: int
    quantity: int = 1


class Checkout(BaseModel):
    customer_id: int
    product_ids: list[int]


class Flags:
    """Feature flags, switched at run time (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._on: set[str] = set()

    def set(self, name: str, on: bool) -> None:
        with self._lock:
            (self._on.add if on else self._on.discard)(name)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._on


def _first(row: tuple[Any, ...] | None, missing: str) -> int:
    """The first value of a one-row result as an int; 404 when there is no row."""
    if row is None:
        raise HTTPException(404, missing)
    return int(row[0])


def create_app(dsn: str, flags: Flags, pool_size: int = 8) -> FastAPI:
    pool = ConnectionPool(
        dsn,
        min_size=2,
        max_size=pool_size,
        open=False,
        kwargs={"application_name": "shop-api", "autocommit": True},
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        pool.open(wait=True)
        with pool.connection() as conn:
            conn.execute(CREATE_SEQUENCE)
        yield
        pool.close()

    app = FastAPI(title="demo shop", lifespan=lifespan)

    @app.get("/products/{product_id}")
    def product(product_id: int) -> dict[str, Any]:
        with pool.connection() as conn:
            row = conn.execute(PRODUCT, (product_id,)).fetchone()
            start = 1 + (product_id * 7919) % 290_000
            also = conn.execute(BEST_SELLERS, (start, start)).fetchall()
        if row is None:
            raise HTTPException(404, "no such product")
        return {
            "id": row[0],
            "sku": row[1],
            "name": row[2],
            "price_cents": row[3],
            "stock": row[4],
            "also_bought": [r[0] for r in also],
        }

    @app.post("/cart")
    def cart(line: CartLine) -> dict[str, str]:
        with pool.connection() as conn:
            conn.execute(ADD_TO_CART, (line.customer_id, line.product_id, line.quantity))
        return {"status": "added"}

    @app.post("/checkout")
    def checkout(order: Checkout) -> dict[str, int]:
        with pool.connection() as conn, conn.transaction():
            order_id = _first(conn.execute(NEXT_ORDER_ID).fetchone(), "no order id")
            prices = [
                _first(conn.execute(PRICE, (p,)).fetchone(), "no such product")
                for p in order.product_ids
            ]
            conn.execute(INSERT_ORDER, (order_id, order.customer_id, sum(prices)))
            for line, (product_id, price) in enumerate(
                zip(order.product_ids, prices, strict=True), 1
            ):
                conn.execute(INSERT_ITEM, (order_id, line, product_id, 1, price))
        return {"order_id": order_id}

    @app.get("/customers/{customer_id}/orders")
    def order_history(customer_id: int) -> dict[str, Any]:
        email = f"customer{customer_id}@example.com"
        with pool.connection() as conn:
            customer = conn.execute(CUSTOMER_BY_EMAIL, (email,)).fetchone()
            orders = conn.execute(RECENT_ORDERS, (customer_id,)).fetchall()
            lines = conn.execute(ORDER_LINES, ([o[0] for o in orders],)).fetchall()
            if "order_history_v2" in flags:
                # v2 shows the buyer on every line: one lookup per line (the N+1 of the story)
                buyers = [conn.execute(CUSTOMER_BY_EMAIL, (email,)).fetchone() for _ in lines]
            else:
                buyers = [customer] * len(lines)
        return {
            "customer": customer[1] if customer else None,
            "orders": [{"id": o[0], "status": o[1], "total_cents": o[2]} for o in orders],
            "lines": len(lines),
            "buyers": len([b for b in buyers if b]),
        }

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/admin/flags/{name}")
    def set_flag(name: str, on: bool = True) -> dict[str, Any]:
        flags.set(name, on)
        return {"flag": name, "on": on}

    return app


def main(argv: list[str] | None = None) -> None:
    """Serve the demo API: ``python -m querywatch.demo.api --dsn DSN --port PORT``."""
    import argparse

    parser = argparse.ArgumentParser(prog="querywatch.demo.api")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = create_app(args.dsn, Flags())
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
