"""The data contract between the report's Python side and its page script (``app.js.j2``).

The page embeds one JSON block in a ``<script type="application/json">``
element (Jinja2's ``tojson``, which escapes ``<``, ``>``, ``&`` and ``'``):

``#bn-data``: one :class:`ReportData` object, parsed when the page loads. The
    matrix cells in the HTML carry ``data-i`` = the index of their
    :class:`Cell` in ``ReportData.cells``; cells refer to cases, adapters,
    runs, observables and divergences by index into ``cases``, ``adapters``,
    ``runs``, ``observables`` and ``divergences`` (each stored once however
    many cells use it).

The plots are drawn in the page (uPlot, inlined) from these numbers when a
cell is drilled down: the running statistics per step from
:attr:`CaseInfo.oracle` (canonical oracle, once per case),
:attr:`Cell.trajectories` (the adapter) and :attr:`Cell.oracle_trajectories`
(the oracle with the cell's divergences, only where it differs), the
error/tolerance ratios from :attr:`Cell.comparisons`. No number is stored twice.

The view model builds the data through these models (so a report that renders
meets the contract) and the tests validate the embedded JSON of a rendered
report against them. Every field is documented below; ``extra="forbid"``
makes any key not declared here a validation error, and a test checks that
every field ``app.js.j2`` reads is declared (to add one: declare it here with
its docstring, fill it in :mod:`.data`, read it in the script). Strings from
results reach the page only as text (``textContent``); URLs only when they are
http(s) (``*_url`` fields are null otherwise). A non-finite number is null.
Cells, comparison tables and trajectories are keyed by short names in the JSON
(:data:`WIRE_KEYS`; the page renames them to the field names when it loads).
Numbers are rounded to what the page shows: errors, tolerances and ratios to
3 significant digits (the tables print 3), plotted values to
:data:`PLOT_DIGITS`.

Field names follow the result records (:class:`bnconform.results.ResultRecord`)
where the value is the same. Comparisons are sent as a column table
(:class:`ComparisonTable`: one list per field, row ``k`` is every column's
``k``-th entry) because they are most of the data; which step and observable
each row is comes from a :class:`RowLayout` shared by every table with the same
rows (the adapters of one case compare the same steps and observables); the
script turns them into row objects with named fields (``rows()`` in
``app.js.j2``). What repeats across cells is stored once and referred to by
index: a cell's reason is an entry of its adapter's :attr:`AdapterInfo.reasons`
(most ``unsupported`` cells of one adapter share a few reasons), its time a
number of seconds after its run's :attr:`RunInfo.t0`, its pytest node id left
out when it is the standard ``FILE::CASE[ADAPTER]``.

Size budget (issue 22): the full matrix (every env, ~7,800 cells of which ~45 %
``unsupported``) in one page of at most 5 MB, written in at most 10 s of CPU;
``tests/test_report.py::test_page_size_per_cell_fits_the_full_matrix_budget``
guards it.

The report builds the data as plain JSON values (:mod:`.data`) and validates the
whole block against :class:`ReportData` once, when it is built.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..results import Verdict

CONTRACT_VERSION = 3
#: Significant digits of plotted values (trajectories): a plot resolves ~1/300 of its range.
PLOT_DIGITS = 4
#: Channels whose running statistics are embedded and plotted per trajectory (the rest are counted).
PLOT_CHANNELS = 4


#: The JSON keys of the fields of the objects the page data holds thousands of (cells, their comparison
#: tables, trajectories): short, because the field names were a third of the data. Only the embedded JSON
#: uses them (``ReportData.field_names`` maps them back; the page script renames every such object's keys
#: when it loads); Python code, this contract and the page script use the field names. One key per name.
WIRE_KEYS = {
    # Cell
    "case": "c", "adapter": "a", "verdict": "v", "reason": "r", "reason_cites_divergences": "rc",
    "divergences": "d", "comparisons": "k", "canonical_comparisons": "kc", "trajectories": "t",
    "oracle_trajectories": "ot", "not_observed": "no", "run": "u", "timestamp": "ts", "duration_s": "s",
    "nodeid": "id", "rerun": "rr", "mark": "m", "others": "x", "baseline": "b",
    # ComparisonTable
    "layout": "l", "rows": "w", "passed": "p", "max_abs_err": "ae", "max_rel_err": "re", "tol_at_worst": "tw",
    "ratio": "q", "message": "g",
    # Trajectory
    "observable": "o", "channels": "ch", "step": "st", "value": "y",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class _Wire(_Model):
    """A model whose JSON keys are :data:`WIRE_KEYS` (the field names are accepted too)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, populate_by_name=True,
                              alias_generator=WIRE_KEYS.__getitem__)


class Source(_Model):
    """A source a case cites (``cases/*.yaml`` ``sources:``)."""

    title: str | None
    """Title as written in the case."""
    url: str | None
    """http(s) URL, else null (never a ``javascript:`` link)."""
    file: str | None
    """Seed thread file name (``/work/shared/seeds/*.txt``), if the source is one."""


class Trajectory(_Wire):
    """Values of one per-channel observable after each step (a plotted trajectory).

    ``value[k]`` is the observable after step ``step[k]``: its first
    :data:`PLOT_CHANNELS` channels, rounded to :data:`PLOT_DIGITS` significant digits,
    null where not finite.
    """

    observable: Literal["running_mean", "running_var"]
    """The observable (one value per channel)."""
    channels: int
    """How many channels the observable has (only the first ``PLOT_CHANNELS`` are in ``value``)."""
    step: list[int]
    """Step indices, increasing."""
    value: list[list[float | None]]
    """One list of channel values per step index."""

    @model_validator(mode="after")
    def _one_value_per_step(self) -> "Trajectory":
        if len(self.step) != len(self.value):
            raise ValueError(f"{len(self.step)} steps but {len(self.value)} values")
        return self


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
    steps: list[str]
    """The operation of each step of the case's program, by step index (e.g. ``forward(train)``), as the
    records' comparisons name them; empty when no cell compared anything."""
    oracle: list[Trajectory]
    """The canonical oracle's running statistics per step (``running_mean``, ``running_var``), the
    reference line of every plot of the case; empty when no cell compared them."""


class AdapterInfo(_Model):
    """One adapter (a column of the matrix); ``name`` is ``adapter @ version`` when versions sit side by side."""

    name: str
    """Adapter name, e.g. ``torch.nn.BatchNorm2d``."""
    framework: str
    """Framework group (the framework filter and the matrix's header row)."""
    reasons: list[str] = []
    """The distinct reasons of this adapter's cells (error messages, unsupported reasons, why a cell fails),
    each once: :attr:`Cell.reason` is an index into this list."""
    run: int
    """Index into ``ReportData.runs``: the run most of this adapter's cells come from (the run of a cell
    that leaves its ``run`` out)."""
    record_name: str | None = None
    """The adapter's name in its records and pytest node ids when ``name`` is a version column's label
    (``adapter @ version``), else null."""


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


class RunInfo(_Model):
    """Where and with what a record was produced (shared by the cells of one env and framework version)."""

    env: str
    """tox env that produced the record (``local`` outside tox)."""
    framework_version: str
    """Version of the framework that ran the cell."""
    python: str
    """Python version."""
    platform: str
    """``sys.platform-machine``, e.g. ``linux-x86_64``."""
    device: str
    """Device it ran on: ``cpu`` or e.g. ``cuda``."""
    t0: str | None = None
    """The earliest cell time of this run in the form ``YYYY-MM-DDTHH:MM:SS+00:00``: a cell's
    :attr:`Cell.timestamp` given as a number counts seconds from it; null when no cell time has that form."""


class RowLayout(_Model):
    """Which comparison a row of a :class:`ComparisonTable` is: row ``k`` is at step ``step[k]``, observable
    ``observable[k]``. Stored once for every table with the same rows (``ReportData.layouts``)."""

    step: list[int | None]
    """Step index of the case's program (0-based); its operation is ``CaseInfo.steps[step]``."""
    observable: list[int]
    """Index into ``ReportData.observables`` (``output``, ``running_var``, ``grad_input``, ...)."""

    @model_validator(mode="after")
    def _same_length(self) -> "RowLayout":
        if len(self.step) != len(self.observable):
            raise ValueError(f"{len(self.step)} steps but {len(self.observable)} observables")
        return self


class ComparisonTable(_Wire):
    """Comparisons of one cell, one column per field, in the order the engine compared them.

    Row ``k`` (every list's ``k``-th entry) is one comparison: at step ``layout.step[k]`` (after the
    operation ``CaseInfo.steps[step]``), the worst element of observable ``layout.observable[k]``
    against the tolerance there. Fields as in a record's ``comparisons`` entries (:mod:`bnconform.compare`).
    """

    layout: int
    """Index into ``ReportData.layouts``: the step and observable of every row."""
    rows: list[int] | None = None
    """Which rows of the layout the columns hold, increasing; null (left out): every row. Only a cell's
    ``canonical_comparisons`` leave rows out: those equal to the same row of its ``comparisons``."""
    passed: list[bool] | None = None
    """Whether every element was within tolerance (and the structure matched); the whole column is null
    (left out of the JSON) when every row passed."""
    max_abs_err: list[float | None]
    """Largest absolute error."""
    max_rel_err: list[float | None]
    """Largest relative error."""
    tol_at_worst: list[float | None]
    """Tolerance at the element with the largest error/tolerance ratio."""
    ratio: list[float | None]
    """Largest error/tolerance over the elements (<= 1 passes; the headroom shown is 1/ratio); null when
    not finite."""
    message: list[str | None] | None = None
    """Why the comparison failed structurally (shape, dtype, NaN pattern), else null; the whole column
    is null (left out of the JSON) when no row has a message."""

    @model_validator(mode="after")
    def _same_length(self) -> "ComparisonTable":
        lengths = {name: len(getattr(self, name)) for name in type(self).model_fields
                   if name not in ("layout", "rows") and getattr(self, name) is not None}
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


class Cell(_Wire):
    """One (case, adapter) cell: what its drill-down shows.

    A field equal to its default (null, ``[]``, ...) is left out of the embedded JSON
    (most cells have no reason, divergence, mark or baseline change); the page
    fills it in from ``ReportData.cell_defaults``.
    """

    case: int
    """Index into ``ReportData.cases``."""
    adapter: int
    """Index into ``ReportData.adapters``."""
    verdict: Verdict
    """The cell's verdict (``conforms``, ``quirk``, ``known_bug``, ``fails``, ``unsupported``, ``error``)."""
    reason: int | None = None
    """Error message, unsupported reason or why it fails: an index into the cell's adapter's
    :attr:`AdapterInfo.reasons`; null when none. With ``reason_cites_divergences``, only what follows the
    divergences' list (below)."""
    reason_cites_divergences: bool = True
    """Read only when the cell shows ``divergences``: true (the default) when its recorded reason is the
    ``id: summary`` of each of them, joined by ``"; "``, followed by ``reason`` (a quirk's or known bug's
    reason; the page puts it back together); false when the recorded reason is ``reason`` alone."""
    divergences: list[int] = Field(default_factory=list)
    """Indices into ``ReportData.divergences``: the documented divergences shown."""
    comparisons: ComparisonTable | None = None
    """Errors against the oracle used for the verdict (with the divergences' options, if any); null if none."""
    canonical_comparisons: ComparisonTable | None = None
    """Errors against the canonical oracle, recorded when a divergence changed the oracle; else null. Its
    ``rows`` (when set) leave out the rows equal to ``comparisons``' (same layout): the divergence changes
    only some observables."""
    trajectories: list[Trajectory | Literal["running_mean", "running_var"]] = Field(default_factory=list)
    """The adapter's running statistics per step (what the plots draw against ``CaseInfo.oracle``); an
    observable's name alone where they equal (same steps, channels, this precision) the oracle the cell
    was judged against: its ``oracle_trajectories`` entry for the observable if it has one, else the
    case's canonical :attr:`CaseInfo.oracle` (the plot draws the adapter's points there)."""
    oracle_trajectories: list[Trajectory] = Field(default_factory=list)
    """The oracle with the cell's documented divergences, per observable where it differs from the
    canonical one (``CaseInfo.oracle``); empty otherwise (drawn dashed)."""
    not_observed: list[int] = Field(default_factory=list)
    """Observables this adapter cannot read back (indices into ``ReportData.observables``)."""
    run: int | None = None
    """Index into ``ReportData.runs``: env, framework version, python, platform and device of the record;
    null (left out): its adapter's :attr:`AdapterInfo.run`."""
    timestamp: str | int
    """Time the record was written: seconds after its run's :attr:`RunInfo.t0` (the page shows
    ``YYYY-MM-DDTHH:MM:SS+00:00``), or the ISO 8601 text as recorded when it has another form."""
    duration_s: float | None = None
    """Seconds the cell took (3 significant digits)."""
    nodeid: str | None = ""
    """pytest node id of the cell; ``""`` (the default, left out of the JSON): the standard
    ``CASE_FILE::CASE_ID[ADAPTER]`` of the cell's case file, case id and adapter name (its
    :attr:`AdapterInfo.record_name` if it has one; the page composes it); null: none recorded."""
    rerun: str | None = None
    """Shell command that reruns the cell (:func:`bnconform.report.data.rerun_command`); null when there is
    no ``nodeid`` or when the command is ``tox -e ENV -- "NODEID"`` with the cell's env and node id (the page
    composes it)."""
    mark: Literal["duplicate", "conflict"] | None = None
    """Set when other shards reported the cell too (see ``others``)."""
    others: list[OtherRecord] = Field(default_factory=list)
    """The other shards' records of this cell (empty unless ``mark`` is set)."""
    baseline: BaselineCell | None = None
    """Set only when a baseline was given and the cell changed against it or is new there."""


class ReportData(_Model):
    """The ``#bn-data`` block: everything the drill-down shows."""

    contract: Literal[3] = CONTRACT_VERSION
    """Version of this contract (bumped on an incompatible change)."""
    cases: list[CaseInfo]
    """Rows of the matrix, by theme, case file, case id."""
    adapters: list[AdapterInfo]
    """Columns of the matrix, by framework, adapter name."""
    divergences: list[DivergenceInfo]
    """Every documented divergence any cell shows, once each."""
    runs: list[RunInfo]
    """Every distinct (env, framework version, python, platform, device) of the records, once each."""
    observables: list[str]
    """Observable names the comparison tables and ``not_observed`` refer to by index."""
    layouts: list[RowLayout]
    """Every distinct (step, observable) row sequence of the comparison tables, once each."""
    cells: list[Cell]
    """Ordered by case, then adapter; matrix cells point here with ``data-i``."""
    glyphs: dict[Verdict, str]
    """One glyph per verdict (the matrix reads without colour too)."""
    cell_defaults: dict[str, Any]
    """The default of every :class:`Cell` field that has one (by field name): what a field left out of a
    cell means."""
    field_names: dict[str, str]
    """JSON key -> field name of :class:`Cell`, :class:`ComparisonTable` and :class:`Trajectory` objects
    (:data:`WIRE_KEYS` reversed): the page renames their keys to the field names when it loads."""
    plots_note: str | None
    """Why there are no plots (switched off with ``--no-plots``: no trajectories embedded, no plotting
    library inlined); null when the page draws them."""


    @model_validator(mode="after")
    def _tables_fit_their_layouts(self) -> "ReportData":
        for n, cell in enumerate(self.cells):
            reasons = self.adapters[cell.adapter].reasons if cell.adapter < len(self.adapters) else []
            if cell.reason is not None and not 0 <= cell.reason < len(reasons):
                raise ValueError(f"cell {n}: reason {cell.reason} is not an entry of its adapter's reasons")
            run = self.adapters[cell.adapter].run if cell.run is None else cell.run
            if not 0 <= run < len(self.runs):
                raise ValueError(f"cell {n}: run {run} does not exist")
            if isinstance(cell.timestamp, int) and self.runs[run].t0 is None:
                raise ValueError(f"cell {n}: a timestamp in seconds but its run has no t0")
            for table in (cell.comparisons, cell.canonical_comparisons):
                if table is None:
                    continue
                if not 0 <= table.layout < len(self.layouts):
                    raise ValueError(f"cell {n}: layout {table.layout} does not exist")
                size = len(self.layouts[table.layout].step)
                if table.rows is None and len(table.ratio) != size:
                    raise ValueError(f"cell {n}: {len(table.ratio)} rows but layout {table.layout} has {size}")
                if table.rows is not None and (
                        table is cell.comparisons or cell.comparisons is None
                        or cell.comparisons.layout != table.layout or len(table.rows) != len(table.ratio)
                        or table.rows != sorted(set(table.rows)) or not all(0 <= k < size for k in table.rows)):
                    raise ValueError(f"cell {n}: canonical rows {table.rows} do not fit its comparisons")
        return self


def field_names() -> dict[str, str]:
    """``ReportData.field_names``: :data:`WIRE_KEYS` reversed."""
    return {key: name for name, key in WIRE_KEYS.items()}


def to_wire(obj: dict, model: type[_Model]) -> dict:
    """A :class:`Cell`, :class:`ComparisonTable` or :class:`Trajectory` as JSON values keyed by field name
    -> keyed by :data:`WIRE_KEYS` (its nested tables and trajectories too); other models as they are."""
    if not issubclass(model, _Wire):
        return obj
    out = {}
    for name, value in obj.items():
        if model is Cell and name in ("comparisons", "canonical_comparisons") and value is not None:
            value = to_wire(value, ComparisonTable)
        elif model is Cell and name in ("trajectories", "oracle_trajectories"):
            value = [to_wire(t, Trajectory) if isinstance(t, dict) else t for t in value]
        out[WIRE_KEYS[name]] = value
    return out


def cell_defaults() -> dict[str, Any]:
    """``ReportData.cell_defaults``: field name -> default of every :class:`Cell` field that has one (JSON values)."""
    return {name: f.get_default(call_default_factory=True) for name, f in Cell.model_fields.items()
            if not f.is_required()}


def validate_data(data: dict[str, Any]) -> dict[str, Any]:
    """Check ``data`` (JSON values, cells without the fields equal to their defaults) against
    :class:`ReportData` in one call and return it unchanged; raises ``pydantic.ValidationError``."""
    ReportData.model_validate(data)
    return data
