"""Render the report HTML with Jinja2 (autoescape on) from the view model.

Templates: ``bnconform/templates/parity.html.j2`` (page, views), ``_macros.html.j2``
(the matrix), ``style.css.j2`` and ``app.js.j2`` (the page script; it reads the
embedded data described in :mod:`bnconform.report.contract`). Every ``{{ }}``
from results is escaped; the drill-down data travels once as JSON (``tojson``
inside ``<script type="application/json">``, compact separators) and the script
turns it into DOM nodes with ``textContent``, so no text from results can
inject markup or run.

The plots are drawn in the page by uPlot (MIT), vendored under
``bnconform/templates/vendor/`` and inlined verbatim (:func:`vendored`): the only
markup not written by the templates, and it never contains text from results.
"""

from __future__ import annotations

import functools
import json
import re

from jinja2 import Environment, PackageLoader, select_autoescape
from jinja2.utils import htmlsafe_json_dumps
from markupsafe import Markup

from ..resultset import Diff, Merged
from .explored import Explored
from .view import build_context

#: The vendored uPlot release (``bnconform/templates/vendor/README.md``).
UPLOT_VERSION = "1.6.32"
#: Sequences that would end or confuse the ``<script>``/``<style>`` element a vendored file is inlined in.
_UNSAFE_INLINE = re.compile(r"(?i)</script|</style|<!--")
#: ... and, for a file inlined inside a ``/* */`` comment (the licence), the end of the comment.
_UNSAFE_IN_COMMENT = re.compile(r"(?i)</script|</style|<!--|\*/")


#: A JSON string, or a number written with a fraction or an exponent (what ``json.dumps`` writes for a float).
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|(-?)(\d+)(?:\.(\d+))?(?:e([-+]?\d+))?')


def _shortest_number(m: re.Match) -> str:
    """The shortest JSON spelling of the same decimal number (so it parses to the same double): an integer
    mantissa and an exponent, ``762e-9`` for ``7.62e-07``, ``177e-6`` for ``0.000177``, ``203`` for
    ``203.0``; anything else (strings, integers, numbers already shortest) as it was."""
    token = m.group(0)
    sign, whole, frac, exp = m.groups()
    if whole is None or (frac is None and exp is None):
        return token
    digits = (whole + (frac or "")).lstrip("0")
    e = int(exp or 0) - len(frac or "")
    if not digits:
        return sign + "0"
    trimmed = digits.rstrip("0")
    e += len(digits) - len(trimmed)
    short = trimmed + ("0" * e if 0 <= e <= 2 else f"e{e}")
    return sign + short if len(sign + short) < len(token) else token


def page_json(data) -> Markup:
    """``data`` as the JSON of a ``<script type="application/json">`` element: compact, every number in its
    shortest spelling (:func:`_shortest_number`: the same values, a quarter fewer bytes for the page's
    errors and tolerances), ``<``, ``>``, ``&`` and ``'`` escaped as Jinja2's ``tojson`` does."""
    seen: dict[str, str] = {}  # tokens repeat (keys, common numbers): each is spelled once

    def spell(m: re.Match) -> str:
        token = m.group(0)
        out = seen.get(token)
        if out is None:
            out = seen[token] = _shortest_number(m)
        return out

    return htmlsafe_json_dumps(data, dumps=lambda obj: _JSON_TOKEN.sub(spell, json.dumps(obj, separators=(",", ":"))))


@functools.lru_cache(maxsize=1)
def environment() -> Environment:
    """The Jinja2 environment of the report's templates (autoescape on for every template; ``tojson`` compact)."""
    env = Environment(loader=PackageLoader("bnconform", "templates"), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.policies["json.dumps_kwargs"] = {"separators": (",", ":")}
    return env


@functools.lru_cache(maxsize=None)
def vendored(name: str, in_comment: bool = False) -> Markup:
    """The text of ``bnconform/templates/vendor/<name>``, marked safe for inlining in ``<script>``/``<style>``.

    Raises ``jinja2.TemplateNotFound`` if the file is not installed with the package and
    ``ValueError`` if it contains ``</script``, ``</style`` or ``<!--`` (which would
    end the element it is inlined in), or ``*/`` when ``in_comment`` (it goes
    inside a ``/* */`` comment).
    """
    env = environment()
    text, _, _ = env.loader.get_source(env, f"vendor/{name}")  # found as the templates are; read, not parsed
    bad = (_UNSAFE_IN_COMMENT if in_comment else _UNSAFE_INLINE).search(text)
    if bad:
        raise ValueError(f"vendor/{name} cannot be inlined: it contains {bad.group(0)!r} at offset {bad.start()}")
    return Markup(text)


def render(merged: Merged, title: str = "bnconform parity report", baseline_diff: Diff | None = None,
           baseline_label: str | None = None, plots: bool = True, explored: Explored | None = None) -> str:
    """Render the report HTML (Jinja2, autoescaped: no text from results can inject markup).

    ``plots``: embed the running statistics and inline uPlot, so that a drill-down
    draws the case's plots; False leaves both out (smaller page) and the
    drill-down says the plots were switched off. ``explored``: the exploration summaries merged into the
    "Explored" view (None: none was given; the view says so).
    """
    ctx = build_context(merged, title, baseline_diff=baseline_diff, baseline_label=baseline_label,
                        plots_note=None if plots else "plots were switched off (--no-plots)",
                        explored=explored)
    if plots:
        ctx["vendor"] = {"uplot_js": vendored("uPlot.iife.min.js"), "uplot_css": vendored("uPlot.min.css"),
                         "uplot_license": vendored("uPlot.LICENSE", in_comment=True)}
        ctx["uplot_version"] = UPLOT_VERSION
    ctx["data_json"] = page_json(ctx.pop("data"))
    return environment().get_template("parity.html.j2").render(**ctx)
