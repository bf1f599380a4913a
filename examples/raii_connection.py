"""E01: a pooled connection returned when its block exits, also when cancelled mid-await.

Source: the article on landing ten thousand in-flight tasks gracefully (tokens, drop guards,
timeouts, production cases).

A ``DatabaseConnection`` whose ``Drop`` hands it back to its pool when the scope ends. Python
has no ``Drop``; the ``with`` block is the scope, and its exit runs on every route out: a normal
end, an exception, and a ``trio.Cancelled`` raised at an await inside the block. Returning a
connection to a pool needs no await, so a plain (synchronous) exit does it, and a cancellation
cannot interrupt it.

Shown: the pool's free count before, during and after a block that ends normally, one that is
cancelled while a query is awaiting, and one that raises.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import Iterator


class Pool:
    def __init__(self, size: int) -> None:
        self._free = [f"conn-{i}" for i in range(size)]

    @property
    def free(self) -> int:
        return len(self._free)

    @contextmanager
    def connection(self) -> Iterator[str]:
        conn = self._free.pop()
        try:
            yield conn
        finally:  # every exit: normal, exception, Cancelled
            self._free.append(conn)
            print(f"  {conn} returned to the pool")


async def query(conn: str, seconds: float) -> str:
    await trio.sleep(seconds)
    return f"{conn}: 42"


async def main() -> None:
    pool = Pool(size=2)
    print(f"free at start: {pool.free}")

    print("normal exit:")
    with pool.connection() as conn:
        print(f"  in use: {conn}, free: {pool.free}; {await query(conn, 0.01)}")
    print(f"  free: {pool.free}")

    print("cancelled mid-await:")
    with trio.move_on_after(0.05) as cs, pool.connection() as conn:
        print(f"  in use: {conn}, free: {pool.free}")
        await query(conn, 10)  # cancelled here
        print("  never printed")
    print(f"  cancelled: {cs.cancelled_caught}; free: {pool.free}")

    print("error in the block:")
    try:
        with pool.connection() as conn:
            raise ValueError("bad SQL")
    except ValueError as exc:
        print(f"  {exc!r} propagated; free: {pool.free}")


if __name__ == "__main__":
    trio.run(main)
