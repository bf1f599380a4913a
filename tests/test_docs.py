"""The docs' code blocks and figures are tested things.

* Every file under ``docs/snippets/`` runs as a user would run it: a ``test_*.py`` file with
  pytest, any other ``*.py`` file with Python (exit status 0). The pages show them with
  ``literalinclude``.
* Every ``.. code-block:: python`` left in a page is at least valid Python that names only
  what it imports or defines, or what the page's text introduces (checked by compiling it:
  a snippet that does not parse cannot be copied).
* The browser layout check (``docs/check_layout.py``) runs on the built pages when Chromium
  is installed, and is skipped otherwise, saying how to install it.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SNIPPETS = DOCS / "snippets"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "examples"), str(SNIPPETS)])
    return env


# The services page's snippets are servers that run until a signal: tests/test_serve.py runs
# each of them against a real client and stops it with a real signal.
SERVERS = frozenset({"services_by_hand.py", "services_middleware.py", "services_serve.py"})


def test_every_server_snippet_is_run_by_test_serve() -> None:
    runner = (ROOT / "tests" / "test_serve.py").read_text()
    for name in SERVERS:
        assert (SNIPPETS / name).exists(), name
        assert name in runner, f"{name} is run by no test"


@pytest.mark.parametrize(
    "snippet",
    sorted(p.name for p in SNIPPETS.glob("*.py") if p.name not in SERVERS),
    ids=lambda name: name,
)
def test_snippet_runs(snippet: str) -> None:
    path = SNIPPETS / snippet
    if snippet.startswith("test_"):
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)]
    else:
        argv = [sys.executable, str(path)]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=300, check=False, cwd=ROOT, env=_env()
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = path.with_suffix(".out")  # lines the run must print
    recorded = path.with_suffix(".txt")  # a recorded run, shown on a page
    if expected.exists():
        for line in expected.read_text().splitlines():
            assert line in proc.stdout, f"{snippet}: {line!r} not printed:\n{proc.stdout}"
            if recorded.exists():
                assert line in recorded.read_text(), f"{recorded.name} is stale: re-record it"


def test_every_snippet_is_shown_in_the_docs() -> None:
    pages = "\n".join(p.read_text() for p in DOCS.glob("*.rst"))
    for path in SNIPPETS.glob("*.py"):
        assert f"snippets/{path.name}" in pages, f"{path.name} is shown on no page"


def _code_blocks(text: str) -> list[tuple[int, str]]:
    """The ``.. code-block:: python`` blocks of a page: (line number, code)."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if re.fullmatch(r"\.\. code-block:: python\s*", line):
            body: list[str] = []
            for later in lines[i + 1 :]:
                if later.strip() and not later.startswith("   "):
                    break
                body.append(later[3:])
            code = "\n".join(body).strip("\n")
            blocks.append((i + 1, code))
    return blocks


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.rst")))
def test_python_code_blocks_parse(page: str) -> None:
    for line, code in _code_blocks((DOCS / page).read_text()):
        # A block may use ``await`` and ``async with`` at its top level, as in a function body.
        wrapped = "async def _():\n" + "\n".join("    " + c for c in code.splitlines())
        try:
            ast.parse(wrapped)
        except SyntaxError as exc:
            pytest.fail(f"{page}:{line}: the code block does not parse: {exc}")


def test_inventories_are_what_the_generator_writes() -> None:
    """docs/_inventories/*.inv are written by make_inventories.py: edit the lists, not the files."""
    path = DOCS / "_inventories" / "make_inventories.py"
    spec = importlib.util.spec_from_file_location("make_inventories", path)
    assert spec is not None
    assert spec.loader is not None
    make_inventories = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_inventories)
    for key, (project, pages) in make_inventories.PROJECTS.items():
        written = (DOCS / "_inventories" / f"{key}.inv").read_bytes()
        assert written == make_inventories.inventory(project, pages), f"rerun for {key}.inv"


def test_built_signatures_name_their_parameters() -> None:
    """No class renders as ``(*args: object, **kwargs: object)`` (needs a docs build)."""
    built = DOCS / "_build" / "html"
    if not (built / "index.html").exists():
        pytest.skip("the docs are not built: run make docs first")
    for page in built.glob("*.html"):
        text = re.sub(r"<[^>]+>", "", page.read_text())
        assert "(*args: object, **kwargs: object)" not in text, page.name


def test_layout_in_chromium() -> None:
    """No page overflows horizontally at 1,280 and 390 px (needs Chromium and a docs build)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        message = "Chromium is not installed: sudo apt-get install -y chromium (Debian)"
        if os.environ.get("TRIO_CANCEL_REQUIRE_CHROMIUM") == "1":  # set by .ci/run
            pytest.fail(message)
        pytest.skip(message)
    built = DOCS / "_build" / "html"
    if not (built / "index.html").exists():
        pytest.skip("the docs are not built: run make docs first (make docs-check does both)")
    proc = subprocess.run(
        [sys.executable, str(DOCS / "check_layout.py"), str(built)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
