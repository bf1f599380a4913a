"""E02: an async cleanup that runs on every exit from a block, shielded and bounded.

Source: the article on landing ten thousand in-flight tasks gracefully (tokens, drop guards,
timeouts, production cases).

Rust's ``Drop`` cannot await, so the seed's ``AsyncGuard`` spawns its async cleanup from
``drop`` (where nobody waits for it) and offers an explicit ``graceful_shutdown(self)`` for
callers that can await. In Trio the cleanup runs in place when the block exits:
``tc.async_guard`` awaits it shielded from the cancellation that is ending the block, and
cancels it if it overruns its grace period. The explicit path is a method that does the work and
then ``guard.disarm()``.

Shown: the cleanup runs on a normal exit, on an error and on a cancellation (taking real time
while the block is being cancelled); an explicit graceful shutdown that disarms the guard; and a
cleanup that hangs, cut off after its grace period with a ``CleanupTimeoutWarning``.
"""

from __future__ import annotations

import warnings

import trio

import trio_cancel as tc


class Session:
    """A resource whose release is asynchronous (it says goodbye over the network)."""

    def __init__(self, name: str, release_seconds: float = 0.05) -> None:
        self.name = name
        self.release_seconds = release_seconds
        self.open = True
        self.releases = 0

    async def release(self) -> None:
        await trio.sleep(self.release_seconds)  # a real await: would die if not shielded
        self.open = False
        self.releases += 1
        print(f"  {self.name}: released")

    async def graceful_shutdown(self, guard: tc.AsyncGuard) -> None:
        """The explicit path: release now, then tell the guard there is nothing left to do."""
        print(f"  {self.name}: graceful shutdown")
        await self.release()
        guard.disarm()


async def main() -> None:
    print("normal exit:")
    session = Session("s1")
    async with tc.async_guard(session.release):
        await trio.sleep(0.01)
    print(f"  open after the block: {session.open}")

    print("error in the block:")
    session = Session("s2")
    try:
        async with tc.async_guard(session.release):
            raise RuntimeError("query failed")
    except RuntimeError as exc:
        print(f"  the block's error still propagates: {exc!r}; open: {session.open}")

    print("cancelled mid-await:")
    session = Session("s3")
    with trio.move_on_after(0.02) as cs:
        async with tc.async_guard(session.release, grace=1.0):
            await trio.sleep(10)
    print(f"  cancelled: {cs.cancelled_caught}; open: {session.open}")

    print("explicit graceful shutdown:")
    session = Session("s4")
    async with tc.async_guard(session.release) as guard:
        await session.graceful_shutdown(guard)
    print(f"  releases: {session.releases}, guard armed: {guard.armed}")

    print("a cleanup that hangs:")
    session = Session("s5", release_seconds=3600)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = trio.current_time()
        async with tc.async_guard(session.release, grace=0.1) as guard:
            pass
        waited = trio.current_time() - start
    print(f"  gave up after {waited:.1f} s: timed_out={guard.timed_out}; open: {session.open}")
    for warning in caught:
        print(f"  {warning.category.__name__}: {warning.message}")


if __name__ == "__main__":
    trio.run(main)
