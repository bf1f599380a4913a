"""E25: a call cut off by a 10 ms timeout may already have written part of its request.

Source: the async Rust book's chapter on cancellation (what happens when a pending future is
dropped).

``timeout(10 ms, http_call())`` prints "Didn't receive a value within 10 ms", and the article
warns: ``http_call`` may have written a *partial* request before it was cancelled, so the server
sees half a request and then a dropped connection.

Here the server is a real TCP listener on 127.0.0.1 (an ephemeral port) that records every byte
it receives; the client sends an HTTP request whose body goes out in slow pieces (a slow
uplink), wrapped in ``trio.move_on_after(0.010)``. Shown: the timeout message, and on the
server side exactly what arrived before the connection dropped: the headers and part of the
body, never the whole request. A Trio ``SocketStream.send_all`` that is cancelled may have sent
part of its data: the same caveat, stated in Trio's documentation.
"""

from __future__ import annotations

import functools

import trio

BODY = b"x" * 64
REQUEST = (
    b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


async def http_call(port: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        head, body = REQUEST[: -len(BODY)], REQUEST[-len(BODY) :]
        await stream.send_all(head)
        for i in range(0, len(body), 8):  # the slow uplink: 8 bytes every 3 ms
            await trio.sleep(0.003)
            await stream.send_all(body[i : i + 8])
        await stream.receive_some()  # the response (never reached here)


async def main() -> None:
    received = bytearray()
    closed = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        async for chunk in stream:  # until the client's connection drops
            received.extend(chunk)
        closed.set()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]

        with trio.move_on_after(0.010) as cs:
            await http_call(port)
        if cs.cancelled_caught:
            print("Didn't receive a value within 10 ms")

        await closed.wait()
        nursery.cancel_scope.cancel()

    head_len = len(REQUEST) - len(BODY)
    print(f"server received {len(received)} of {len(REQUEST)} bytes, then the connection dropped")
    print(f"  headers complete: {received[:head_len] == REQUEST[:head_len]}")
    print(f"  body bytes: {len(received) - head_len} of {len(BODY)} (a partial request)")
    print(f"  a prefix of the request, nothing else: {REQUEST.startswith(bytes(received))}")


if __name__ == "__main__":
    trio.run(main)
