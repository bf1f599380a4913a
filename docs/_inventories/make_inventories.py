"""Write the small intersphinx inventories the docs link with, offline.

    python docs/_inventories/make_inventories.py

The build machines have no network to fetch the projects' own ``objects.inv``, so the names the
docs and docstrings refer to are listed here with their pages in each project's real
documentation, and written as Sphinx inventory files (version 2) next to this script. Add a
name here when a page refers to one that does not link yet (``make docs`` says which:
``nitpicky`` is on for trio_cancel's own names; others stay plain text until listed).
"""

from __future__ import annotations

import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Each project: (its name, {page: [(name, role), ...]}); its base URL is in conf.py.
TRIO_CORE = [
    ("trio.run", "function"),
    ("trio.Cancelled", "exception"),
    ("trio.CancelScope", "class"),
    ("trio.move_on_after", "function"),
    ("trio.move_on_at", "function"),
    ("trio.fail_after", "function"),
    ("trio.fail_at", "function"),
    ("trio.TooSlowError", "exception"),
    ("trio.sleep", "function"),
    ("trio.current_time", "function"),
    ("trio.open_nursery", "function"),
    ("trio.Nursery", "class"),
    ("trio.TaskStatus", "class"),
    ("trio.Event", "class"),
    ("trio.Lock", "class"),
    ("trio.CapacityLimiter", "class"),
    ("trio.open_memory_channel", "function"),
    ("trio.MemorySendChannel", "class"),
    ("trio.MemoryReceiveChannel", "class"),
    ("trio.EndOfChannel", "exception"),
    ("trio.ClosedResourceError", "exception"),
    ("trio.BrokenResourceError", "exception"),
    ("trio.WouldBlock", "exception"),
    ("trio.to_thread.run_sync", "function"),
    ("trio.from_thread.run_sync", "function"),
    ("trio.from_thread.run", "function"),
]
TRIO_IO = [
    ("trio.abc.ReceiveChannel", "class"),
    ("trio.abc.SendChannel", "class"),
    ("trio.abc.ReceiveStream", "class"),
    ("trio.abc.SendStream", "class"),
    ("trio.abc.Stream", "class"),
    ("trio.SocketStream", "class"),
    ("trio.open_tcp_stream", "function"),
    ("trio.serve_tcp", "function"),
    ("trio.open_signal_receiver", "function"),
    ("trio.run_process", "function"),
]
TRIO_LOWLEVEL = [
    ("trio.lowlevel.Task", "class"),
    ("trio.lowlevel.RunVar", "class"),
    ("trio.lowlevel.checkpoint", "function"),
    ("trio.lowlevel.checkpoint_if_cancelled", "function"),
    ("trio.lowlevel.cancel_shielded_checkpoint", "function"),
    ("trio.lowlevel.wait_readable", "function"),
    ("trio.lowlevel.notify_closing", "function"),
    ("trio.lowlevel.current_task", "function"),
]
TRIO_TESTING = [
    ("trio.testing.MockClock", "class"),
    ("trio.testing.wait_all_tasks_blocked", "function"),
    ("trio.testing.assert_checkpoints", "function"),
]

PYTHON = {
    "library/exceptions.html": [
        (name, "exception")
        for name in (
            "BaseException",
            "Exception",
            "BaseExceptionGroup",
            "ExceptionGroup",
            "KeyboardInterrupt",
            "SystemExit",
            "TypeError",
            "ValueError",
            "RuntimeError",
            "AssertionError",
            "OSError",
            "TimeoutError",
            "NotImplementedError",
            "LookupError",
            "KeyError",
            "StopAsyncIteration",
            "RuntimeWarning",
            "ResourceWarning",
            "Warning",
        )
    ],
    "library/functions.html": [
        ("int", "class"),
        ("float", "class"),
        ("str", "class"),
        ("bool", "class"),
        ("bytes", "class"),
        ("object", "class"),
        ("tuple", "class"),
        ("list", "class"),
        ("dict", "class"),
    ],
    "library/functools.html": [("functools.partial", "function")],
    "library/contextlib.html": [
        ("contextlib.AbstractContextManager", "class"),
        ("contextlib.AbstractAsyncContextManager", "class"),
    ],
    "library/sqlite3.html": [
        ("sqlite3.connect", "function"),
        ("sqlite3.Error", "exception"),
        ("sqlite3.Connection", "class"),
        ("sqlite3.Connection.interrupt", "method"),
    ],
    "library/os.html": [("os.PathLike", "class")],
    "library/datetime.html": [("datetime.datetime", "class"), ("datetime.timedelta", "class")],
    "library/gc.html": [("gc.collect", "function"), ("gc.freeze", "function")],
    "library/signal.html": [("signal.SIGINT", "data"), ("signal.SIGTERM", "data")],
    "library/typing.html": [("typing.final", "function")],
}

PROJECTS = {
    "trio": (
        "Trio",
        {
            "reference-core.html": TRIO_CORE,
            "reference-io.html": TRIO_IO,
            "reference-lowlevel.html": TRIO_LOWLEVEL,
            "reference-testing.html": TRIO_TESTING,
        },
    ),
    "python": ("Python", PYTHON),
    "trio_util": (
        "trio-util",
        {
            "": [
                ("trio_util.periodic", "function"),
                ("trio_util.wait_any", "function"),
                ("trio_util.move_on_when", "function"),
                ("trio_util.run_and_cancelling", "function"),
                ("trio_util.defer_to_cancelled", "function"),
                ("trio_util.AsyncValue", "class"),
                ("trio_util.AsyncBool", "class"),
            ]
        },
    ),
    "httpx": (
        "HTTPX",
        {
            "api/#asyncclient": [("httpx.AsyncClient", "class")],
            "api/#client": [("httpx.Client", "class")],
            "advanced/transports/#asgi-transport": [("httpx.ASGITransport", "class")],
        },
    ),
    "hypercorn": (
        "Hypercorn",
        {
            "how_to_guides/api_usage.html#": [("hypercorn.trio.serve", "function")],
            "how_to_guides/configuring.html#": [("hypercorn.config.Config", "class")],
        },
    ),
    "psycopg": (
        "psycopg",
        {
            "api/module.html": [("psycopg.connect", "function")],
            "api/errors.html": [
                ("psycopg.Error", "exception"),
                ("psycopg.OperationalError", "exception"),
            ],
            "api/connections.html": [("psycopg.Connection", "class")],
        },
    ),
}


def inventory(project: str, pages: dict[str, list[tuple[str, str]]]) -> bytes:
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        "# Version: \n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    lines = []
    for page, names in pages.items():
        for name, role in names:
            # "$" stands for the name itself; "-" for "display the name". A page given with
            # its "#anchor" (or a bare "#": none) is used as it is (sites not built by Sphinx).
            uri = page if "#" in page else f"{page}#$"
            lines.append(f"{name} py:{role} 1 {uri.removesuffix('#')} -\n")
    return header.encode() + zlib.compress("".join(sorted(lines)).encode())


def main() -> None:
    for key, (project, pages) in PROJECTS.items():
        (HERE / f"{key}.inv").write_bytes(inventory(project, pages))


if __name__ == "__main__":
    main()
