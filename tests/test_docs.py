"""The docs' code blocks and figures are tested things.

* A page shows code only with ``literalinclude`` of a file the tests run: a snippet under
  ``docs/snippets/``, an example under ``examples/``, or a recorded output (``example_output/``,
  ``bench/``, a snippet's ``.txt``). A ``code-block`` or ``::`` literal block is allowed only
  for shell commands and configuration text (its language says which: ``console``, ``yaml``).
* Every file under ``docs/snippets/`` runs as a user would run it: a ``test_*.py`` file with
  pytest, any other ``*.py`` file with Python (exit status 0); those that need a PostgreSQL
  server run when one is configured (``.ci/with-postgres``), and the ``.sql`` files run
  against it. What a snippet shows on a page fits in 88 columns.
* The browser layout check (``docs/check_layout.py``) runs on the built pages when Chromium
  is installed, and is skipped otherwise, saying how to install it.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import trio

import trio_cancel as tc

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
# Snippets that need a PostgreSQL server: run by test_postgres_snippet_runs when one is set up.
POSTGRES = frozenset({"machines_bus.py"})
PG_DSN = os.environ.get("TRIO_CANCEL_PG_DSN")
REQUIRE_PG = os.environ.get("TRIO_CANCEL_REQUIRE_PG") == "1"


def _require_pg() -> str:
    if PG_DSN is None:
        if REQUIRE_PG:
            pytest.fail("TRIO_CANCEL_REQUIRE_PG=1 but no TRIO_CANCEL_PG_DSN: no PostgreSQL server")
        pytest.skip(
            "no PostgreSQL server: run the tests through .ci/with-postgres (make test does), or "
            "set TRIO_CANCEL_PG_DSN; to install PostgreSQL: sudo apt-get install -y postgresql"
        )
    return PG_DSN


def test_every_server_snippet_is_run_by_test_serve() -> None:
    runner = (ROOT / "tests" / "test_serve.py").read_text()
    for name in SERVERS:
        assert (SNIPPETS / name).exists(), name
        assert name in runner, f"{name} is run by no test"


@pytest.mark.parametrize(
    "snippet",
    sorted(p.name for p in SNIPPETS.glob("*.py") if p.name not in SERVERS | POSTGRES),
    ids=lambda name: name,
)
def test_snippet_runs(snippet: str) -> None:
    _run_snippet(snippet)


@pytest.mark.parametrize("snippet", sorted(POSTGRES))
def test_postgres_snippet_runs(snippet: str) -> None:
    _require_pg()
    _run_snippet(snippet)


def _run_snippet(snippet: str) -> None:
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
    for path in [*SNIPPETS.glob("*.py"), *SNIPPETS.glob("*.sql")]:
        assert f"snippets/{path.name}" in pages, f"{path.name} is shown on no page"


# Code a page may show in place: shell commands and configuration text, told apart by the
# block's language. Everything else is a literalinclude of a file the tests run.
UNTESTED_LANGUAGES = frozenset({"console", "shell", "bash", "sh", "yaml"})
# What a literalinclude may show: snippets and examples (run by the tests), recorded outputs.
INCLUDE_DIRS = ("snippets/", "../examples/", "example_output/", "bench/")
WIDTH = 88  # columns a code block may take on a page without scrolling


def _directives(text: str, name: str) -> list[tuple[int, str, dict[str, str]]]:
    """The ``.. name:: argument`` directives of a page: (line number, argument, options)."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        match = re.fullmatch(rf"\.\. {name}::\s*(.*?)\s*", line)
        if match is None:
            continue
        options = {}
        for later in lines[i + 1 :]:
            option = re.fullmatch(r"   :([\w-]+):\s*(.*?)\s*", later)
            if option is None:
                break
            options[option[1]] = option[2]
        found.append((i + 1, match[1], options))
    return found


def _untested_blocks(text: str) -> list[str]:
    """Why each code block of a page (``code-block``, ``code``, ``sourcecode``, a ``::``
    literal block, an include from elsewhere) is not a tested thing."""
    problems = []
    for directive in ("code-block", "code", "sourcecode"):
        for line, language, _ in _directives(text, directive):
            if language not in UNTESTED_LANGUAGES:
                problems.append(f"line {line}: a {language or 'plain'} {directive}")
    for line, path, _ in _directives(text, "literalinclude"):
        if not path.startswith(INCLUDE_DIRS):
            problems.append(f"line {line}: includes {path}, which no test runs")
    for number, source in enumerate(text.splitlines(), 1):
        if source.rstrip().endswith("::") and not source.lstrip().startswith(".."):
            problems.append(f"line {number}: a literal block (::)")
    return problems


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.rst")))
def test_every_code_block_is_a_tested_file(page: str) -> None:
    problems = _untested_blocks((DOCS / page).read_text())
    assert not problems, (
        f"{page}: show code with a literalinclude of a snippet the tests run "
        f"(docs/snippets/, tests/test_docs.py runs it): {problems}"
    )


def test_the_check_finds_untested_blocks() -> None:
    page = """Title
=====

.. code-block:: python

   print("hello")

.. code-block:: sql

   SELECT 1;

.. code:: python

   x = 1

Output::

   4 tasks

.. literalinclude:: ../trio_cancel/_token.py

.. code-block:: console

   $ make test

.. code-block:: yaml

   spec: {}

.. literalinclude:: snippets/quickstart.py
   :language: python
"""
    problems = _untested_blocks(page)
    assert [p.split(":")[0] for p in problems] == [
        "line 4",
        "line 8",
        "line 12",
        "line 20",
        "line 16",
    ], problems


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.rst")))
def test_shown_snippet_lines_fit_the_page(page: str) -> None:
    """What a page shows of a snippet's code: the lines Sphinx includes, at most 88 columns
    each (a recorded output, ``.txt``, is shown as the program printed it)."""
    pytest.importorskip("sphinx", reason="Sphinx is a development tool: make test installs it")
    from sphinx.config import Config
    from sphinx.directives.code import LiteralIncludeReader

    for line, path, options in _directives((DOCS / page).read_text(), "literalinclude"):
        if not path.startswith("snippets/") or path.endswith(".txt"):
            continue
        reader_options: dict[str, object] = dict(options)
        if "dedent" in options:
            reader_options["dedent"] = int(options["dedent"])
        text, _ = LiteralIncludeReader(DOCS / path, reader_options, Config()).read()
        assert text.strip(), f"{page}:{line}: includes nothing of {path}"
        assert text.strip("\n") + "\n" == text, f"{page}:{line}: blank lines around {path}"
        wide = [shown for shown in text.splitlines() if len(shown) > WIDTH]
        assert not wide, f"{page}:{line}: {path} shows lines wider than {WIDTH}: {wide}"


def _statements(sql_file: str) -> list[str]:
    """The statements of a ``.sql`` snippet, comments removed."""
    text = (SNIPPETS / sql_file).read_text()
    code = "\n".join(line.split("--")[0] for line in text.splitlines())
    return [part.strip() for part in code.split(";") if part.strip()]


def _conninfo(dsn: str, schema: str, **kwargs: str) -> str:
    import psycopg.conninfo

    return psycopg.conninfo.make_conninfo(dsn, options=f"-csearch_path={schema}", **kwargs)


@pytest.fixture
def pg_dsn() -> str:
    """The server's DSN, or a skip that says why (a sync fixture: pytest-trio drops the message
    of a skip raised inside an async test)."""
    return _require_pg()


async def test_sql_snippets_run_against_postgres(pg_dsn: str) -> None:
    """machines.rst's plain SQL: the three ways to cancel reach a bus (the sender stamped by
    the server, whatever the client wrote), and the grants give exactly what the page says.

    Everything runs in a schema of its own (it stands in for ``public``, so the snippets run
    verbatim); the roles get unique names, and everything is dropped at the end.
    """
    import psycopg
    import psycopg.errors

    import trio_cancel.postgres as tc_postgres

    dsn = pg_dsn
    tag = uuid.uuid4().hex[:10]
    schema, canceller, worker = f"tc_docs_{tag}", f"canceller_{tag}", f"worker_{tag}"
    password = uuid.uuid4().hex
    admin = _conninfo(dsn, schema)

    async def sql(conninfo: str, statement: str) -> list[tuple[object, ...]]:
        async with await tc_postgres.connect(conninfo) as conn:
            if statement.lstrip().upper().startswith("SELECT"):
                return await conn.fetchall(statement)
            await conn.execute(statement)
            return []

    async def as_role(role: str, statement: str) -> list[tuple[object, ...]]:
        return await sql(_conninfo(dsn, schema, user=role, password=password), statement)

    await sql(dsn, f"CREATE SCHEMA {schema}")
    for role in (canceller, worker):
        await sql(dsn, f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        await sql(dsn, f"GRANT USAGE ON SCHEMA {schema} TO {role}")
    try:
        async with tc_postgres.open_cancel_bus(admin) as bus:  # creates the table
            # The page's plain SQL, run as it is shown.
            cancels = _statements("machines_cancel.sql")
            assert len(cancels) == 3
            token = bus.token("job-42")
            ((me,),) = await sql(dsn, "SELECT session_user")
            await sql(admin, cancels[0])
            with trio.fail_after(30):
                await token.wait_cancelled()
            assert token.reason == "the user pressed stop"
            assert isinstance(token.cause, tc_postgres.RemoteCancel)
            assert token.cause.sender.startswith(str(me)), token.cause  # stamped by the server
            for statement in cancels[1:]:
                await sql(admin, statement)
            rows = await sql(
                admin,
                "SELECT reason, expires_at - sent_at FROM trio_cancel_requests "
                "WHERE kind = 'cancel' AND job_id = 'job-42' ORDER BY id",
            )
            assert [r[0] for r in rows] == ["the user pressed stop", None, "stop"]
            ttl = rows[1][1]  # its own ttl (from the transaction's start to the row's stamp)
            assert isinstance(ttl, datetime.timedelta)
            assert abs(ttl - datetime.timedelta(minutes=10)) < datetime.timedelta(seconds=5)
            await bus.landed("job-42", tc.Aborted(token.reason))
            # The sender cannot be forged: the trigger overwrites what the client wrote.
            await sql(
                admin,
                "INSERT INTO trio_cancel_requests (job_id, reason, sender) "
                "VALUES ('job-43', 'x', 'somebody else')",
            )
            senders = await sql(
                admin, "SELECT sender FROM trio_cancel_requests WHERE job_id = 'job-43'"
            )
            assert str(senders[0][0]).startswith(str(me)), senders

            # The grants, one statement at a time, and what each allows.
            grants = [
                statement.replace(" canceller", f" {canceller}").replace(" worker", f" {worker}")
                for statement in _statements("machines_grants.sql")
            ]
            assert len(grants) == 3
            insert = "INSERT INTO trio_cancel_requests (job_id) VALUES ('job-44')"
            call = "SELECT trio_cancel_requests_cancel('job-44')"
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await as_role(canceller, insert)  # nothing granted yet
            await sql(admin, grants[0])  # may cancel, by INSERT only
            await as_role(canceller, insert)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await as_role(canceller, call)
            await sql(admin, grants[1])  # may cancel with the function
            assert (await as_role(canceller, call))[0][0] is not None  # the request's id
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await as_role(canceller, "DELETE FROM trio_cancel_requests")
            await sql(admin, grants[2])  # runs a bus: a worker's run, cancelled by canceller
            worker_dsn = _conninfo(dsn, schema, user=worker, password=password)
            async with tc_postgres.open_cancel_bus(worker_dsn) as worker_bus:
                run = await worker_bus.start_run("job-45")
                await as_role(canceller, "SELECT trio_cancel_requests_cancel('job-45', 'bye')")
                with trio.fail_after(30):
                    await run.wait_cancelled()
                assert run.reason == "bye"
                assert isinstance(run.cause, tc_postgres.RemoteCancel)
                assert run.cause.sender.startswith(canceller), run.cause
                await worker_bus.landed("job-45", tc.Aborted(run.reason))  # DELETE, INSERT
            landings = await sql(
                admin,
                "SELECT outcome, sender FROM trio_cancel_requests "
                "WHERE kind = 'landed' AND job_id = 'job-45'",
            )
            assert len(landings) == 1, landings
            assert landings[0][0] == "aborted"
            assert str(landings[0][1]).startswith(worker), landings
    finally:
        with trio.CancelScope(shield=True):
            await sql(dsn, f"DROP SCHEMA {schema} CASCADE")
            for role in (canceller, worker):
                await sql(dsn, f"DROP ROLE {role}")


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
