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
]

html_theme = "furo"
html_static_path = ["_static"]
html_css_files = ["tables.css"]
exclude_patterns = ["_build", "_generated"]

# Keep "--full" and "..." as typed (smart quotes turn "--" into a dash, also in titles).
smartquotes = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_custom_sections = [("Cancellation", "notes_style")]

# Every cross-reference into trio_cancel must resolve (nitpicky, and -W makes a miss an error).
# Intersphinx would need the network, which the build machines do not have, so references to
# Python's and Trio's own objects stay plain text instead of links.
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


def _example_sections() -> str:
    """One section per script in examples/, from its docstring (the single source): the title,
    the prose, the script, and its recorded output (checked by tests/test_examples.py)."""
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
        entries.append((number or "E99", path, title, number, body.strip()))
    parts = []
    for _, path, title, number, body in sorted(entries, key=lambda e: (e[0], e[1].name)):
        heading = f"{title} ({number})" if number else title
        parts += [f".. _example-{path.stem}:", "", heading, "-" * len(heading), "", body, ""]
        parts += [
            f"Script ``examples/{path.name}``:",
            "",
            f".. literalinclude:: /../examples/{path.name}",
        ]
        parts += [
            "   :language: python",
            "   :start-at: from __future__ import annotations",
            "",
            "",
        ]
        output = DOCS / "example_output" / f"{path.stem}.txt"
        if output.exists():
            parts += ["What it printed:", "", f".. literalinclude:: /example_output/{output.name}"]
            parts += ["   :language: text", "", ""]
    return "\n".join(parts)


def _write_generated(app):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN202
    generated = DOCS / "_generated"
    generated.mkdir(exist_ok=True)
    target = generated / "examples.rst"
    text = _example_sections()
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


def setup(app):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN201
    app.connect("missing-reference", _resolve_private_paths)
    app.connect("builder-inited", _write_generated)
