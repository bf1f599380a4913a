"""The middleware around any ASGI app: each request runs under a token of its own."""

from __future__ import annotations

import json
from typing import Any

from trio_cancel.asgi import CancelMiddleware


async def handler(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        raise RuntimeError("no lifespan support")
    token = scope["extensions"]["trio_cancel"]["token"]  # this request's own token
    body = json.dumps({"cancelled": token.is_cancelled()}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


app = CancelMiddleware(handler, timeout=30.0)  # what the server runs
