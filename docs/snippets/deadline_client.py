"""The services page's calling side: an httpx client whose hook sends the caller's remaining
deadline, checked against a real HTTP server on 127.0.0.1 that records the headers it gets
(tests/test_docs.py)."""

from __future__ import annotations

import functools

import httpx
import trio

seen: list[dict[str, str]] = []


async def http_server(stream: trio.SocketStream) -> None:
    """Just enough HTTP/1.1: read one request's head, note its headers, answer 204."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some()
        if not chunk:
            return
        head += chunk
    lines = head.split(b"\r\n\r\n")[0].decode().split("\r\n")[1:]
    seen.append({k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)})
    await stream.send_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
    await stream.aclose()


async def main() -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, host="127.0.0.1"), http_server, 0
        )
        url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/"
        # [docs-client]
        from trio_cancel.deadlines import async_propagate_deadline

        client = httpx.AsyncClient(event_hooks={"request": [async_propagate_deadline]})
        # [/docs-client]
        async with client:
            with trio.fail_after(2):  # the caller's deadline travels with the call
                await client.get(url)
            # 2 s less the 20 ms margin, less the time the call took to start:
            assert 0 < int(seen[-1]["connect-timeout-ms"]) <= 1980, seen[-1]
            await client.get(url)  # with no deadline, no header
            assert "connect-timeout-ms" not in seen[-1], seen[-1]
            # No more than the margin (20 ms) left: the call is not sent, and the caller's
            # own scope ends it.
            with trio.move_on_after(0.015) as cs:
                await client.get(url)
            assert cs.cancelled_caught
            assert len(seen) == 2, seen
        nursery.cancel_scope.cancel()
    print("async_propagate_deadline: the deadline travelled; none without one; none sent late")


trio.run(main)
