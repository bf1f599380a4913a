"""Check the built docs in headless Chromium: no page runs off the right edge.

    python docs/check_layout.py [docs/_build/html] [--widths 1280 390]

Builds nothing: it loads every HTML page of an existing build (``make docs``) in one headless
Chromium, driven over the Chrome DevTools protocol (a websocket, spoken with wsproto on Trio),
at each width, and fails (exit status 1) when

* the page itself scrolls sideways (the document is wider than the window), or
* an element of the page's content (a code block, a table, a long name) reaches past the
  right edge of the content column without a scrolling or clipping box around it (a block
  that scrolls inside itself is fine).

Chromium: Debian's ``chromium`` package (``sudo apt-get install -y chromium``), found on PATH
or given with ``--chromium``. Runs offline: the browser's background networking is off.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    Request,
    TextMessage,
)

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-allow-origins=*",
]

# Run in the page: what reaches past the right edge. Furo's drawers (position: fixed, off the
# screen until opened) are not content; a box that scrolls or clips holds its overflow inside.
CHECK = r"""
(() => {
  const width = document.documentElement.clientWidth;
  const problems = [];
  const describe = (el) => {
    const names = typeof el.className === "string" ? el.className.trim() : "";
    const cls = names ? "." + names.split(/\s+/).join(".") : "";
    const text = (el.textContent || "").trim().replace(/\s+/g, " ").slice(0, 60);
    return `<${el.tagName.toLowerCase()}${cls}> "${text}"`;
  };
  if (document.documentElement.scrollWidth > width + 1) {
    const wide = document.documentElement.scrollWidth;
    problems.push(`the page is ${wide} px wide in a ${width} px window`);
  }
  const article = document.querySelector("article") || document.body;
  // Furo's content column (the article plus its padding): headings' permalinks and
  // signatures' hover backgrounds use that padding by design.
  const column = article.closest(".content") || article;
  const edge = Math.round(Math.min(column.getBoundingClientRect().right, width));
  const contained = (el) => {
    for (let p = el.parentElement; p && p !== article; p = p.parentElement) {
      const style = getComputedStyle(p);
      if (["auto", "scroll", "hidden", "clip"].includes(style.overflowX)) return true;
      if (style.position === "fixed") return true;
    }
    return false;
  };
  // A name in a table broken in the middle (a code span without a space, on two lines).
  for (const code of article.querySelectorAll("table code.literal")) {
    const text = code.textContent || "";
    if (!/\s/.test(text.trim()) && code.getClientRects().length > 1) {
      problems.push(`${describe(code)} is broken in the middle of a name`);
    }
  }
  for (const el of article.querySelectorAll("*")) {
    const rect = el.getBoundingClientRect();
    if (rect.width === 0 || rect.height === 0) continue;
    if (rect.right > edge + 1 && !contained(el)) {
      const right = Math.round(rect.right);
      problems.push(`${describe(el)} ends at ${right} px, past the content's edge at ${edge} px`);
    }
  }
  return problems.slice(0, 8);
})()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class DevTools:
    """A minimal Chrome DevTools protocol client: one page target, one websocket."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.next_id = 0
        self.pending: list[Any] = []

    @classmethod
    async def connect(cls, url: str) -> DevTools:
        host_port, _, path = url.removeprefix("ws://").partition("/")
        host, _, port = host_port.partition(":")
        stream = await trio.open_tcp_stream(host, int(port))
        ws = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(ws.send(Request(host=host_port, target="/" + path)))
        self = cls(stream, ws)
        while True:
            for event in await self._events():
                if isinstance(event, AcceptConnection):
                    return self

    async def _events(self) -> list[Any]:
        data = await self.stream.receive_some()
        if not data:
            raise RuntimeError("Chromium closed the DevTools connection")
        self.ws.receive_data(data)
        return list(self.ws.events())

    async def call(self, method: str, **params: Any) -> dict[str, Any]:  # noqa: ANN401
        self.next_id += 1
        call_id = self.next_id
        message = json.dumps({"id": call_id, "method": method, "params": params})
        await self.stream.send_all(self.ws.send(Message(data=message)))
        text = ""
        while True:
            for event in await self._events():
                if isinstance(event, Ping):
                    await self.stream.send_all(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    raise RuntimeError("Chromium closed the DevTools connection")
                elif isinstance(event, TextMessage):
                    text += event.data
                    if not event.message_finished:
                        continue
                    reply = json.loads(text)
                    text = ""
                    if reply.get("id") == call_id:
                        if "error" in reply:
                            raise RuntimeError(f"{method}: {reply['error']}")
                        result: dict[str, Any] = reply["result"]
                        return result


async def _page_loaded(tools: DevTools) -> None:
    # Poll document.readyState and the fonts: simpler than following the event stream.
    for _ in range(400):
        reply = await tools.call(
            "Runtime.evaluate",
            expression="document.readyState === 'complete' && document.fonts.status === 'loaded'",
            returnByValue=True,
        )
        if reply["result"].get("value") is True:
            return
        await trio.sleep(0.05)
    raise RuntimeError("the page did not finish loading in 20 s")


async def check(built: Path, widths: list[int], chromium: str) -> int:
    pages = sorted(p for p in built.rglob("*.html") if "_static" not in p.parts)
    if not pages:
        print(f"check_layout: no HTML pages under {built}: run make docs first", file=sys.stderr)
        return 2
    port = _free_port()
    profile = tempfile.mkdtemp(prefix="check-layout-")
    argv = [
        chromium,
        *FLAGS,
        f"--user-data-dir={profile}",
        f"--remote-debugging-port={port}",
        "about:blank",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    failures = 0
    try:
        targets: list[dict[str, Any]] = []
        for _ in range(600):  # wait for the DevTools endpoint (a loaded machine: up to 30 s)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    targets = [t for t in json.load(r) if t.get("type") == "page"]
                if targets:
                    break
            except OSError:
                pass
            await trio.sleep(0.05)
        if not targets:
            print("check_layout: Chromium did not open its DevTools endpoint", file=sys.stderr)
            return 2
        tools = await DevTools.connect(targets[0]["webSocketDebuggerUrl"])
        for width in widths:
            await tools.call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=900,
                deviceScaleFactor=1,
                mobile=width < 600,
            )
            for page in pages:
                await tools.call("Page.navigate", url=page.resolve().as_uri())
                await _page_loaded(tools)
                reply = await tools.call("Runtime.evaluate", expression=CHECK, returnByValue=True)
                problems = reply["result"].get("value") or []
                name = page.relative_to(built)
                if problems:
                    failures += 1
                    print(f"FAIL {name} at {width} px:")
                    for problem in problems:
                        print(f"  {problem}")
        total = len(pages) * len(widths)
        print(
            f"check_layout: {total - failures} of {total} page renders fit ({len(pages)} pages "
            f"at {', '.join(f'{w} px' for w in widths)})"
        )
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("built", nargs="?", default=str(Path(__file__).parent / "_build" / "html"))
    parser.add_argument("--widths", type=int, nargs="+", default=[1280, 390])
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM"))
    args = parser.parse_args()
    chromium = args.chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print(
            "check_layout: Chromium is not installed: sudo apt-get install -y chromium",
            file=sys.stderr,
        )
        return 2
    return trio.run(check, Path(args.built), args.widths, chromium)


if __name__ == "__main__":
    sys.exit(main())
