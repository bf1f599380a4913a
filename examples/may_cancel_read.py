"""E19: a read on a slow device that, when its token fires, returns the bytes it already has.

Source: the article on cancelling async tasks gracefully in Rust (the ``may_cancel_with``
pattern).

``input.read_async(&mut buf)`` can be awaited plainly (runs to completion) or as
``read_async(&mut buf).may_cancel_with(&mut tok)``, which stops early when ``tok`` is cancelled
and *returns* how many bytes arrived, instead of dropping them with the future.
``@tc.may_cancel`` gives a Trio function the same two calling styles.

The device here is a real socket pair (``trio.socket.socketpair``) whose far end drips one byte
every 20 ms. Shown: a read of 40 bytes bounded by a token that fires after 0.25 s returns the
dozen that arrived, all kept in the buffer; a plain ``await`` then reads the rest to completion;
every byte sent is in the buffer exactly once.
"""

from __future__ import annotations

import trio

import trio_cancel as tc

MESSAGE = b"the quick brown fox jumps over the dog!!"  # 40 bytes


@tc.may_cancel
async def read_exactly(
    stream: trio.abc.ReceiveStream, buf: bytearray, n: int, *, token: tc.CancellationToken
) -> int:
    """Read ``n`` bytes into ``buf``. If ``token`` fires first, return how many arrived.

    ``receive_some`` is cancel-safe in Trio (a cancelled call consumes nothing), so stopping
    between two receives loses nothing.
    """
    got = 0
    with token.cancel_scope():
        while got < n:
            chunk = await stream.receive_some(n - got)
            if not chunk:
                break
            buf += chunk
            got += len(chunk)
    return got


async def slow_device(stream: trio.SocketStream) -> None:
    for byte in MESSAGE:
        await stream.send_all(bytes([byte]))
        await trio.sleep(0.02)
    await stream.aclose()


async def main() -> None:
    near, far = trio.socket.socketpair()
    reader, device = trio.SocketStream(near), trio.SocketStream(far)
    buf = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_device, device)

        token = tc.CancellationToken()
        token.cancel_after(0.25, reason="0.25 s is all we wait")
        got = await read_exactly(reader, buf, len(MESSAGE)).may_cancel_with(token)
        print(f"with the token: {got} of {len(MESSAGE)} bytes before it fired: {bytes(buf)!r}")
        print(f"  partial: {0 < got < len(MESSAGE)}; token reason: {token.reason!r}")

        rest = await read_exactly(reader, buf, len(MESSAGE) - got)
        print(f"plain await: the remaining {rest} bytes, read to completion")
    await reader.aclose()
    print(f"buffer == message: {bytes(buf) == MESSAGE} ({len(buf)} bytes, none lost or doubled)")


if __name__ == "__main__":
    trio.run(main)
