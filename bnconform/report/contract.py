"""The data contract between the report's Python side and its page script (``app.js.j2``).

The page embeds two JSON blocks, each in a ``<script type="application/json">``
element (Jinja2's ``tojson``, which escapes ``<``, ``>``, ``&`` and ``'``):

``#bn-data``: one :class:`ReportData` object, parsed when the page loads. The
    matrix cells in the HTML carry ``data-i`` = the index of their
    :class:`Cell` in ``ReportData.cells``; cells refer to cases, adapters and
    divergences by index into ``cases``, ``adapters`` and ``divergences``
    (each divergence is stored once however many cells show it).
``#bn-figs``: :data:`FIGURES` = ``{str(case index): base64 of the case's SVG}``,
    parsed on the first drill-down only; a case without numeric comparisons
    has no entry.

The view model builds the data through these models (so a report that renders
meets the contract) and the tests validate the embedded JSON of a rendered
report against them. Every field is documented below; ``extra="forbid"``
makes any key not declared here a validation error, and a test checks that
every field ``app.js.j2`` reads is declared (to add one: declare it here with
its docstring, fill it in :mod:`.data`, read it in the script). Strings from
results reach the page only as text (``textContent``); URLs only when they are
http(s) (``*_url`` fields are null otherwise). Numbers are rounded to 4
significant digits; a non-finite number is null.

Field names follow the result records (:class:`bnconform.results.ResultRecord`)
where the value is the same. Comparisons are sent as a column table
(:class:`ComparisonTable`: one list per field, row ``k`` is every column's
``k``-th entry) because they are most of the data; the script turns them into
row objects with named fields (``rows()`` in ``app.js.j2``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter, model_validator

from ..results import Verdict

CONTRACT_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Source(_Model):
    """A source a case cites (``cases/*.yaml`` ``sources:``)."""

    title: str | None
    """Title as written in the case."""
    url: str | None
    """http(s) URL, else null (never a ``javascript:`` link)."""
    file: str | None
    """Seed thread file name (``/work/shared/seeds/*.txt``), if the source is one."""


class CaseInfo(_Model):
    """One case (a row of the matrix)."""

    id: str
    """Case id (``case_id`` of the records)."""
    title: str
    """One-line title."""
    behaviour: str
    """What the case checks, one sentence."""
    theme: str
    """Theme the matrix groups the case under (training, inference, numerics, ...)."""
    tags: list[str]
    """Tags the tag filter offers (dtype, layout, ...)."""
    file: str
    """Case file, e.g. ``cases/training.yaml``."""
    sources: list[Source]
    """Sources the case cites (may be empty)."""


class AdapterInfo(_Model):
    """One adapter (a column of the matrix); ``name`` is ``adapter @ version`` when versions sit side by side."""

    name: str
    """Adapter name, e.g. ``torch.nn.BatchNorm2d``."""
    framework: str
    """Framework group (the framework filter and the matrix's header row)."""


class DivergenceInfo(_Model):
    """A documented divergence as recorded (``divergences`` entries of a record: :meth:`bnconform.expect.Entry.to_dict`)."""

    id: str | None
    """Divergence id (stable; what the baseline diff compares)."""
    kind: str | None
    """``quirk`` or ``known_bug`` (also the CSS class of its box)."""
    summary: str | None
    """What differs, one sentence."""
    source: str | None
    """Where the behaviour is documented (text as recorded)."""
    source_url: str | None
    """``source`` when it is an http(s) URL, else null."""
    issue: str | None
    """Upstream issue (text as recorded)."""
    issue_url: str | None
    """``issue`` when it is an http(s) URL, else null."""
    finding: str | None
    """Reproduction script under ``findings/``."""
    options: dict[str, Any]
    """Oracle profile options that model the divergence (empty when none)."""
    versions: str | None
    """PEP 440 version range it applies to; null = every version."""
    observables: list[str]
    """Observables an expected failure covers."""
    raises: str | None
    """Pattern of the expected exception."""
    ref: str | None = None
    """The expectations entry it came from, ``expectations/<file>.yaml#<id>``."""
    max_ratio: float | dict[str, float] | None = None
    """An expected failure's bound: the worst error/tolerance ratio allowed (per input dtype when a mapping)."""
    derivation: str | None = None
    """How that bound follows from the documented defect."""


class ComparisonTable(_Model):
    """Comparisons of one cell, one column per field, in the order the engine compared them.

    Row ``k`` (every list's ``k``-th entry) is one comparison: at ``step`` after
    ``op``, the worst element of ``observable`` against the tolerance there.
    Fields as in a record's ``comparisons`` entries (:mod:`bnconform.compare`).
    """

    step: list[int | None]
    """Step index of the case's program (0-based)."""
    op: list[str | None]
    """The step's operation, e.g. ``forward(train)``."""
    observable: list[str | None]
    """e.g. ``output``, ``running_var``, ``grad_input``."""
    passed: list[bool]
    """Whether every element was within tolerance (and the structure matched)."""
    max_abs_err: list[float | None]
    """Largest absolute error."""
    max_rel_err: list[float | None]
    """Largest relative error."""
    tol_at_worst: list[float | None]
    """Tolerance at the element with the largest error/tolerance ratio."""
    ratio: list[float | None]
    """Largest error/tolerance over the elements (<= 1 passes); null when not finite."""
    headroom: list[float | None]
    """1/ratio: how many times larger the error could have been; null when ``ratio`` is 0 (exact)."""
    message: list[str | None]
    """Why the comparison failed structurally (shape, dtype, NaN pattern), else null."""

    @model_validator(mode="after")
    def _same_length(self) -> "ComparisonTable":
        lengths = {name: len(getattr(self, name)) for name in type(self).model_fields}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"columns of unequal length: {lengths}")
        return self


class OtherRecord(_Model):
    """Another shard's record of the same cell (the matrix shows the first one read)."""

    kind: Literal["duplicate", "conflict"]
    """``duplicate``: same verdict, framework version and divergence ids; else ``conflict``."""
    verdict: Verdict
    """That record's verdict."""
    env: str
    """tox env that wrote that record."""
    version: str
    """Framework version of that record."""
    platform: str
    """Platform of that record, e.g. ``linux-x86_64``."""
    divergences: list[str]
    """Ids of the divergences that record shows."""


class BaselineCell(_Model):
    """The cell in the baseline run, when it changed (``verdict`` null: the cell is new)."""

    verdict: Verdict | None
    """Verdict in the baseline; null: the cell is not in the baseline."""
    divergences: list[str]
    """Divergence ids in the baseline."""
    framework_version: str | None
    """Framework version in the baseline."""


class Cell(_Model):
    """One (case, adapter) cell: what its drill-down shows."""

    case: int
    """Index into ``ReportData.cases``."""
    adapter: int
    """Index into ``ReportData.adapters``."""
    verdict: Verdict
    """The cell's verdict (``conforms``, ``quirk``, ``known_bug``, ``fails``, ``unsupported``, ``error``)."""
    reason: str | None
    """Error message, unsupported reason or why it fails; null when none."""
    divergences: list[int]
    """Indices into ``ReportData.divergences``: the documented divergences shown."""
    comparisons: ComparisonTable | None
    """Errors against the oracle used for the verdict (with the divergences' options, if any); null if none."""
    canonical_comparisons: ComparisonTable | None
    """Errors against the canonical oracle, recorded when a divergence changed the oracle; else null."""
    not_observed: list[str]
    """Observables this adapter cannot read back."""
    framework_version: str
    """Version of the framework that ran the cell."""
    device: str
    """Device it ran on: ``cpu`` or e.g. ``cuda``."""
    env: str
    """tox env that produced the record (``local`` outside tox)."""
    python: str
    """Python version."""
    platform: str
    """``sys.platform-machine``, e.g. ``linux-x86_64``."""
    timestamp: str
    """ISO 8601 time the record was written."""
    duration_s: float | None
    """Seconds the cell took (3 significant digits)."""
    nodeid: str | None
    """pytest node id of the cell."""
    rerun: str | None
    """Shell command that reruns the cell (:func:`bnconform.report.data.rerun_command`)."""
    mark: Literal["duplicate", "conflict"] | None
    """Set when other shards reported the cell too (see ``others``)."""
    others: list[OtherRecord]
    """The other shards' records of this cell (empty unless ``mark`` is set)."""
    baseline: BaselineCell | None
    """Set only when a baseline was given and the cell changed against it or is new there."""


class ReportData(_Model):
    """The ``#bn-data`` block: everything the drill-down shows."""

    contract: Literal[1] = CONTRACT_VERSION
    """Version of this contract (bumped on an incompatible change)."""
    cases: list[CaseInfo]
    """Rows of the matrix, by theme, case file, case id."""
    adapters: list[AdapterInfo]
    """Columns of the matrix, by framework, adapter name."""
    divergences: list[DivergenceInfo]
    """Every documented divergence any cell shows, once each."""
    cells: list[Cell]
    """Ordered by case, then adapter; matrix cells point here with ``data-i``."""
    glyphs: dict[Verdict, str]
    """One glyph per verdict (the matrix reads without colour too)."""
    plots_note: str | None
    """Why there are no plots (switched off, matplotlib missing); null when plots were drawn."""


#: ``#bn-figs``: ``{str(index into ReportData.cases): base64 of that case's SVG figure}``.
FIGURES = TypeAdapter(dict[str, str])
