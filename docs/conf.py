"""Sphinx configuration for trio_cancel's documentation."""

from __future__ import annotations

import ast
import re
from pathlib import Path

project = "trio_cancel"
copyright = "2026, the trio_cancel developers"
author = "the trio_cancel developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinxcontrib_trio",
    "sphinx.ext.intersphinx",
]

# Links to other projects' docs, from small inventories kept in the repository (the build
# machines have no network for the projects' own objects.inv): _inventories/make_inventories.py
# lists the names the docs refer to and writes them.
intersphinx_mapping = {
    name: (url, f"_inventories/{name}.inv")
    for name, url in {
        "python": "https://docs.python.org/3/",
        "trio": "https://trio.readthedocs.io/en/stable/",
        "trio_util": "https://trio-util.readthedocs.io/en/latest/",
        "httpx": "https://www.python-httpx.org/",
        "hypercorn": "https://hypercorn.readthedocs.io/en/latest/",
        "psycopg": "https://www.psycopg.org/psycopg3/docs/",
    }.items()
}

html_theme = "furo"
html_static_path = ["_static"]
html_css_files = ["tables.css"]
exclude_patterns = ["_build", "_generated", "snippets", "_inventories"]

# Keep "--full" and "..." as typed (smart quotes turn "--" into a dash, also in titles).
smartquotes = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_custom_sections = [("Cancellation", "notes_style")]

# Every cross-reference into trio_cancel must resolve (nitpicky, and -W makes a miss an error);
# other projects' names link through intersphinx when the inventories list them, and stay
# plain text otherwise.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"^(?!trio_cancel\b).*"),
    # type variables in generic signatures are not documented objects
    (r"py:class", r"trio_cancel\._\w+\.(T|T_co|PosArgsT)"),
]


def _resolve_private_paths(app, env, node, contnode):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN202
    """Resolve ``trio_cancel._module.Name`` (as some signatures say) to ``trio_cancel.Name``."""

    target = node.get("reftarget", "")
    match = re.fullmatch(r"trio_cancel\._\w+\.(\w+)", target)
    if node.get("refdomain") != "py" or match is None:
        return None
    domain = env.get_domain("py")
    for module in ("trio_cancel", "trio_cancel.sqlite"):
        node["reftarget"] = f"{module}.{match.group(1)}"
        found = domain.resolve_xref(
            env, node["refdoc"], app.builder, node["reftype"], node["reftarget"], node, contnode
        )
        if found is not None:
            return found
    return None


DOCS = Path(__file__).resolve().parent
EXAMPLES = DOCS.parent / "examples"


def _example_entries() -> list[tuple[str, Path, str, str]]:
    """(sort key, script, title, body) of each script in examples/, from its docstring."""
    entries = []
    for path in sorted(EXAMPLES.glob("*.py")):
        if path.name.startswith("_"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or path.stem
        first, _, body = doc.partition("\n")
        match = re.match(r"(E\d\d): (.*)", first)
        number, title = (match.group(1), match.group(2)) if match else ("", first)
        title = title.rstrip(".")
        title = title[0].upper() + title[1:]
        heading = f"{title} ({number})" if number else title
        entries.append((number or "E99", path, heading, body.strip()))
    return sorted(entries, key=lambda e: (e[0], e[1].name))


def _example_page(path: Path, heading: str, body: str) -> str:
    """One page per script (the single source is its docstring): the title, the prose, the
    script, and its recorded output (checked by tests/test_examples.py)."""
    parts = [f".. _example-{path.stem}:", "", heading, "=" * len(heading), "", body, ""]
    parts += [
        f"Script ``examples/{path.name}``:",
        "",
        f".. literalinclude:: /../examples/{path.name}",
    ]
    parts += ["   :language: python", "   :start-at: from __future__ import annotations", "", ""]
    output = DOCS / "example_output" / f"{path.stem}.txt"
    if output.exists():
        parts += ["What it printed:", "", f".. literalinclude:: /example_output/{output.name}"]
        parts += ["   :language: text", "", ""]
    return "\n".join(parts)


def _example_index(entries: list[tuple[str, Path, str, str]]) -> str:
    """The examples page's table (number, example, script) and its hidden toctree."""
    parts = [".. list-table::", "   :header-rows: 1", "   :widths: 10 60 30", ""]
    parts += ["   * - #", "     - Example", "     - Script"]
    for key, path, _, _ in entries:
        number = key if key != "E99" else ""
        parts += [f"   * - {number}", f"     - :ref:`example-{path.stem}`"]
        parts += [f"     - ``{path.name}``"]
    parts += ["", ".. toctree::", "   :hidden:", ""]
    parts += [f"   examples/{path.stem}" for _, path, _, _ in entries]
    return "\n".join(parts) + "\n"


def _write(target: Path, text: str) -> None:
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


def _write_generated(app, config):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN202
    entries = _example_entries()
    generated = DOCS / "_generated"
    generated.mkdir(exist_ok=True)
    _write(generated / "examples_index.rst", _example_index(entries))
    pages = DOCS / "examples"
    pages.mkdir(exist_ok=True)
    wanted = set()
    for _, path, heading, body in entries:
        wanted.add(f"{path.stem}.rst")
        _write(pages / f"{path.stem}.rst", _example_page(path, heading, body))
    for stale in pages.glob("*.rst"):
        if stale.name not in wanted:
            stale.unlink()


def _hide_catch_all_signature(app, what, name, obj, options, signature, return_annotation):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN202
    """A class that users do not construct (its ``__init__`` takes ``*args, **kwargs`` only to
    refuse them) renders without parameters, not as ``(*args: object, **kwargs: object)``."""
    if what == "class" and signature == "(*args: object, **kwargs: object)":
        return "", return_annotation
    return None


def setup(app):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN201
    app.connect("missing-reference", _resolve_private_paths)
    app.connect("autodoc-process-signature", _hide_catch_all_signature)
    app.connect("config-inited", _write_generated)
