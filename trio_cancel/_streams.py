"""Sending and receiving that keep their partial progress when cancelled.

Trio documents that a cancelled ``SendStream.send_all`` "may have sent some, all, or none" of
the data, with no way to know which. Each underlying socket ``send`` and each
``receive_some``, however, is all-or-nothing under cancellation: cancelled, it moved no byte.
Driving those one at a time and recording each one's result in a buffer gives tokio's
``write_all_buf`` and ``read_buf``: after a cancellation the buffer says exactly what moved.
"""

from __future__ import annotations

import trio

_CHUNK = 65536


def _check_buffer(buf: object, what: str) -> None:
    if not isinstance(buf, bytearray):
        raise TypeError(
            f"{what} needs a bytearray (it records its progress in it), not {type(buf).__name__}"
        )


async def send_all_from(stream: trio.SocketStream, buf: bytearray) -> None:  # noqa: ASYNC910
    """Send all of ``buf``, deleting each byte from it as it goes out (tokio's
    ``write_all_buf``).

    When it returns, ``buf`` is empty. If it is cancelled (or the connection fails), ``buf``
    holds exactly the bytes that were not sent, so ``sent = len_before - len(buf)``; call it
    again to send the rest. To stop on a token: ``with token.cancel_scope(): await
    tc.send_all_from(stream, buf)``.

    Do not use ``stream.send_all`` concurrently (as with any two sends on one stream).

    Raises:
        TypeError: ``stream`` is not a :class:`trio.SocketStream`, or ``buf`` not a
            ``bytearray``.
        trio.BrokenResourceError: The connection failed (``buf`` still holds what was not
            sent).

    Cancellation:
        Always a checkpoint. Each socket send either completes or, cancelled, sends nothing:
        ``buf`` is exact whenever the cancellation lands.
    """
    if not isinstance(stream, trio.SocketStream):
        raise TypeError(f"send_all_from() needs a trio.SocketStream, not {type(stream).__name__}")
    _check_buffer(buf, "send_all_from()")
    if not buf:
        await trio.lowlevel.checkpoint()
        return
    sock = stream.socket
    while buf:
        try:
            sent = await sock.send(bytes(buf[:_CHUNK]))
        except OSError as exc:
            raise trio.BrokenResourceError(f"the connection failed: {exc}") from exc
        del buf[:sent]


async def receive_into(  # noqa: ASYNC910 - the loop runs at least once
    stream: trio.abc.ReceiveStream, buf: bytearray, size: int
) -> None:
    """Receive into ``buf`` until it holds ``size`` bytes or the peer closes the stream
    (the mirror of :func:`send_all_from`, tokio's ``read_buf`` in a loop).

    Every byte received is appended to ``buf`` at once: if the call is cancelled, ``buf``
    holds exactly what arrived, and a later call carries on. To read "until ``size`` bytes or
    the token fires": ``with token.cancel_scope(): await tc.receive_into(stream, buf, size)``.

    Raises:
        TypeError: ``buf`` is not a ``bytearray``.
        ValueError: ``size`` is negative.

    Cancellation:
        Always a checkpoint. Each ``receive_some`` either returns data or, cancelled,
        receives nothing: ``buf`` is exact whenever the cancellation lands.
    """
    _check_buffer(buf, "receive_into()")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"size must be an int >= 0, not {size!r}")
    if len(buf) >= size:
        await trio.lowlevel.checkpoint()
        return
    while len(buf) < size:
        data = await stream.receive_some(min(size - len(buf), _CHUNK))
        if not data:
            return  # end of stream: buf holds everything that came
        buf += data
