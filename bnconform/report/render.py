"""Render the report HTML with Jinja2 (autoescape on) from the view model.

Templates: ``bnconform/templates/parity.html.j2`` (page, views), ``_macros.html.j2``
(the matrix), ``style.css.j2`` and ``app.js.j2`` (the page script; it reads the
embedded data described in :mod:`bnconform.report.contract`). Every ``{{ }}``
from results is escaped; the drill-down data travels once as JSON (``tojson``
inside ``<script type="application/json">``) and the script turns it into DOM
nodes with ``textContent``, so no text from results can inject markup or run.
"""

from __future__ import annotations

import functools

from jinja2 import Environment, PackageLoader, select_autoescape

from ..resultset import Diff, Merged
from .view import build_context


@functools.lru_cache(maxsize=1)
def environment() -> Environment:
    """The Jinja2 environment of the report's templates (autoescape on for every template)."""
    return Environment(loader=PackageLoader("bnconform", "templates"), autoescape=select_autoescape(default=True),
                       trim_blocks=True, lstrip_blocks=True)


def render(merged: Merged, title: str = "bnconform parity report", baseline_diff: Diff | None = None,
           figures: dict[str, str] | None = None, baseline_label: str | None = None,
           plots_note: str | None = None) -> str:
    """Render the report HTML (Jinja2, autoescaped: no text from results can inject markup).

    ``figures``: case id -> SVG text (:func:`bnconform.report.figures.case_figures`);
    ``plots_note``: shown in the drill-down instead of a plot when there are none.
    """
    ctx = build_context(merged, title, baseline_diff=baseline_diff, figures=figures, baseline_label=baseline_label,
                        plots_note=plots_note)
    return environment().get_template("parity.html.j2").render(**ctx)
