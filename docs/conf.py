"""Sphinx configuration for trio_cancel's documentation."""

from __future__ import annotations

import re

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
exclude_patterns = ["_build"]

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


def setup(app):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN201
    app.connect("missing-reference", _resolve_private_paths)
