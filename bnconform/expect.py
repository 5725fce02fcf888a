"""Documented divergences as reviewable data: ``expectations/<framework>.yaml``.

Every difference between a framework and the canonical oracle that the suite
accepts is an ENTRY of one expectations file, validated by the pydantic schema
below (like the case catalogue; every error names ``file: entry 'id': field
'x.y': message``). One file per BUILTIN group family (``groups:`` lists the
``adapters.BUILTIN`` groups it covers); adding a framework is an adapter
module, its expectations file and one BUILTIN registration.

An entry::

    - id: flax-biased-running-var          # unique in the file
      kind: quirk                          # quirk | known_bug | rejection
      summary: ...                         # one sentence, shown in the report
      source: ...                          # framework file / doc / thread establishing it
      issue: https://...                   # upstream report (known_bug: issue or finding)
      finding: findings/x.py               # reproduction script
      versions: ">=0.8"                    # PEP 440 specifier of framework versions (empty: all)
      adapters: [flax.linen.BatchNorm]     # report names (default: every row of the file's groups)
      where: {dtype: [float16], has_backward: true}   # closed selector vocabulary (Where)
      # EXACTLY ONE of:
      options: {running_var_correction: biased}        # oracle Profile knobs reproducing it exactly
      raises: "TorchExportError"                       # regex on "Type: message" of the expected exception
      expected_failure:                                # a defect the oracle cannot model (known_bug only)
        observables: [grad_weight]
        max_ratio: 8192
        derivation: "u_float16 / u_float32 = 2^13: ..."

Kinds: ``quirk`` — a documented design choice; ``known_bug`` — a documented
defect (needs ``issue`` or ``finding``); ``rejection`` — the framework's
documented way of refusing a case whose semantics the oracle finds undefined
(``raises`` only): a cell on an undefined case ``conforms`` only when the
framework raises an exception matching an applicable rejection.

A framework version that is not PEP 440 never satisfies a version range: the
engine records ``error`` for the cell (fail closed, loudly), see
:class:`VersionUnparseable`.

The selector vocabulary (:class:`Where`) is CLOSED: properties of the case's
program and data types that a documentation page can state. No case ids, no
Python predicates, no thresholds on the catalogue's data.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .builtin import location
from .catalogue import (DTYPES, MODES, OBSERVABLES, SAFE_LOADER, Backward, Case, DataFileError, Forward, SgdStep,
                        load_yaml)

#: What the built-in expectations files are shown relative to (``expectations/torch.yaml``): the checkout,
#: or the installed package data (:mod:`bnconform.builtin`).
ROOT = location().root
#: Where the BUILTIN rows' expectations live.
EXPECTATIONS_DIR = location().expectations


class ExpectationError(DataFileError):
    """An expectations file or entry is malformed: ``<file>: entry '<id>': field '<dotted.path>': <message>``
    (attributes ``file``, ``entry_id``, ``field``, ``message``)."""

    noun = "entry"
    location_tags = frozenset({"function-after[_one_behaviour(), Entry]"})
    location_tag_prefixes = ("literal[",)

    @property
    def entry_id(self) -> str | None:
        return self.item_id


class VersionUnparseable(ValueError):
    """The framework version is not PEP 440, so no version range can be
    decided: the cell is ``error`` (never "the expectation applies")."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Mode = Literal["train", "eval", "train_global_stats"]
assert set(Mode.__args__) == set(MODES)  # type: ignore[attr-defined]


class Where(_Strict):
    """Where an entry applies: every given condition must hold (AND); ``any_of``
    holds when one of its selectors does (OR). An empty selector selects every
    case. The vocabulary (closed):

    * ``dtype``: the input dtype is one of these.
    * ``rank``: the input rank (``len(shape)``) is one of these.
    * ``channel_axis``: the channel axis (as a non-negative index, or negative
      counted from the end) is one of these: ``[1]`` channels-first,
      ``[-1]`` channels-last.
    * ``reduction_size``: values per channel in one batch (``N * spatial``) is
      one of these (0: an empty batch; 1: a single value per channel).
    * ``has_backward`` / ``has_sgd_step``: the program has a backward / an SGD step.
    * ``train_forward`` / ``eval_forward`` / ``global_stats_forward``: the
      program has a forward in mode ``train`` / ``eval`` / ``train_global_stats``.
    * ``batch_stats_forward``: some forward normalises with the batch
      statistics (mode ``train``, or any mode without tracked statistics).
    * ``train_backward``: some backward runs through a ``train``-mode forward.
    * ``backward_after``: some backward runs through a forward in one of these modes.
    * ``track_running_stats`` / ``affine``: the layer's flags.
    * ``cumulative_average``: ``momentum: null`` with tracked statistics and a
      train forward (:attr:`Case.uses_cumulative_average`).
    * ``frozen_count``: how many of weight/bias are frozen.
    * ``trainable``: each listed parameter is learnable (affine, not frozen).
    * ``sgd_lr_float32_exact``: every SGD learning rate of the program is a
      float32 number (``False``: some is not).
    * ``replicas``: the case runs synchronized over replicas (``Case.replicas``).
    * ``uneven_replicas``: the case's replicas hold different batch sizes.
    * ``num_features``: the layer's channel count C is one of these.
    * ``eps_zero``: the layer's ``eps`` is 0 (frameworks that require a
      positive eps refuse it; added for a divergence ``bnconform explore`` found).
    * ``tags``: the case has one of these tags.
    * ``equal_initial_values``: the initial ``weight`` equals the initial
      ``running_var`` or the initial ``bias`` the initial ``running_mean``,
      channel for channel (without ``affine``: weight 1, bias 0, the values an
      exporter writes) — tensors a constant-sharing pass merges into one.
    * ``nonempty_batches``: every input batch has at least one value per
      channel (``reduction_size > 0``).
    """

    dtype: list[Literal[DTYPES]] | None = None  # type: ignore[valid-type]
    rank: list[int] | None = None
    channel_axis: list[int] | None = None
    reduction_size: list[Literal[0, 1]] | None = None
    has_backward: bool | None = None
    has_sgd_step: bool | None = None
    train_forward: bool | None = None
    eval_forward: bool | None = None
    global_stats_forward: bool | None = None
    batch_stats_forward: bool | None = None
    train_backward: bool | None = None
    backward_after: list[Mode] | None = None
    track_running_stats: bool | None = None
    affine: bool | None = None
    cumulative_average: bool | None = None
    frozen_count: list[Literal[0, 1, 2]] | None = None
    trainable: list[Literal["weight", "bias"]] | None = None
    sgd_lr_float32_exact: bool | None = None
    eps_zero: bool | None = None
    tags: list[str] | None = None
    replicas: bool | None = None
    uneven_replicas: bool | None = None
    num_features: list[int] | None = None
    equal_initial_values: bool | None = None
    nonempty_batches: bool | None = None
    params_overflow_dtype: bool | None = None
    any_of: list["Where"] | None = Field(default=None, min_length=1)

    def matches(self, case: Case) -> bool:
        """Whether ``case`` is selected (every given condition holds)."""
        for name in self.model_fields_set:
            value = getattr(self, name)
            if value is None:
                continue
            if name == "any_of":
                if not any(w.matches(case) for w in value):
                    return False
            elif not _CONDITIONS[name](case, value):
                return False
        return True


def _modes_backpropagated(case: Case) -> set[str]:
    """Modes of the forwards that some backward runs through (the latest forward before it)."""
    modes, last = set(), None
    for s in case.steps:
        if isinstance(s, Forward):
            last = s.mode
        elif isinstance(s, Backward) and last is not None:
            modes.add(last)
    return modes


def _has(case: Case, kind) -> bool:
    return any(isinstance(s, kind) for s in case.steps)


def _modes(case: Case) -> set[str]:
    return {s.mode for s in case.steps if isinstance(s, Forward)}


def _equal_initial_values(case: Case) -> bool:
    import numpy as np

    from .arrays import initial_values

    init = initial_values(case)
    w = init["weight"] if case.layer.affine else np.ones(case.layer.num_features)
    b = init["bias"] if case.layer.affine else np.zeros(case.layer.num_features)
    return bool(np.array_equal(w, init["running_var"]) or np.array_equal(b, init["running_mean"]))


def _params_overflow_dtype(case: Case) -> bool:
    """Whether an initial gamma or beta (weight/bias) of an affine case rounds to an infinity in the input
    dtype (IEEE round to nearest: ``|v| >= largest finite + half an ulp``, e.g. 1e5 >= 65520 for float16):
    a framework that reads the parameters in the input dtype gets ``inf`` there."""
    import numpy as np

    from .arrays import initial_values

    if not case.layer.affine:
        return False
    init = initial_values(case)
    top = _rounds_to_inf(case.input.dtype)
    return bool(np.any(np.abs(init["weight"].astype(np.float64)) >= top)
                or np.any(np.abs(init["bias"].astype(np.float64)) >= top))


def _rounds_to_inf(dtype: str) -> float:
    """The smallest magnitude that rounds to infinity in ``dtype``: the largest finite value ``(2 - 2u) 2^emax``
    plus half an ulp at it, ``u 2^emax`` (``u`` the unit roundoff): ``(2 - u) 2^emax``, e.g. 65520 for float16
    (exact in float64; inf for float64 itself)."""
    from .compare import MAX_FINITE, UNIT_ROUNDOFF

    top, u = MAX_FINITE[dtype], UNIT_ROUNDOFF[dtype]
    return top + u * (top / (2 - 2 * u))


def _f32_exact(v: float) -> bool:
    import numpy as np

    return float(np.float32(v)) == float(v)


_CONDITIONS = {
    "dtype": lambda c, v: c.input.dtype in v,
    "rank": lambda c, v: len(c.input.shape) in v,
    "channel_axis": lambda c, v: any(a % len(c.input.shape) == c.input.axis for a in v),
    "reduction_size": lambda c, v: c.input.reduction_size in v,
    "has_backward": lambda c, v: _has(c, Backward) == v,
    "has_sgd_step": lambda c, v: _has(c, SgdStep) == v,
    "train_forward": lambda c, v: ("train" in _modes(c)) == v,
    "eval_forward": lambda c, v: ("eval" in _modes(c)) == v,
    "global_stats_forward": lambda c, v: ("train_global_stats" in _modes(c)) == v,
    "batch_stats_forward": lambda c, v: bool("train" in _modes(c)
                                             or (_modes(c) and not c.layer.track_running_stats)) == v,
    "train_backward": lambda c, v: ("train" in _modes_backpropagated(c)) == v,
    "backward_after": lambda c, v: bool(_modes_backpropagated(c) & set(v)),
    "track_running_stats": lambda c, v: c.layer.track_running_stats == v,
    "affine": lambda c, v: c.layer.affine == v,
    "cumulative_average": lambda c, v: c.uses_cumulative_average == v,
    "frozen_count": lambda c, v: len(set(c.layer.frozen)) in v,
    "trainable": lambda c, v: c.layer.affine and not set(v) & set(c.layer.frozen),
    "sgd_lr_float32_exact": lambda c, v: all(_f32_exact(s.lr) for s in c.steps if isinstance(s, SgdStep)) == v,
    "eps_zero": lambda c, v: (c.layer.eps == 0.0) == v,
    "tags": lambda c, v: bool(set(v) & set(c.tags)),
    "replicas": lambda c, v: (c.replicas is not None) == v,
    "num_features": lambda c, v: c.layer.num_features in v,
    "uneven_replicas": lambda c, v: (c.replicas is not None and len(set(c.replicas)) > 1) == v,
    "equal_initial_values": lambda c, v: _equal_initial_values(c) == v,
    "nonempty_batches": lambda c, v: (c.input.reduction_size > 0) == v,
    "params_overflow_dtype": lambda c, v: _params_overflow_dtype(c) == v,
}
assert set(_CONDITIONS) | {"any_of"} == set(Where.model_fields), "every selector needs its condition"


class ExpectedFailure(_Strict):
    """A defect the oracle cannot model: on the selected cases the listed
    ``observables`` must FAIL (everything else must pass), and no error may
    exceed ``max_ratio`` times the tolerance — a bound DERIVED from the
    documented defect (``derivation`` says how; never measured on the
    catalogue), one number or one per input dtype. Exceeding it is
    ``fails``: the bug got worse. ``absent``: observables the defect leaves
    without any value (the framework returns none, e.g. a gradient that is
    None); only those may fail by being missing. ``wrong_dtype``:
    observables the defect returns in another dtype; their VALUES are still
    judged against the bound. ``nan``: observables the defect makes NaN where
    the oracle has a value (IEEE ``inf - inf`` or ``0 * inf`` after the defect
    overflowed a value); only those may fail by being NaN (the comparison
    reports the NaN, so that observable's other elements are not bounded in that
    cell: select such an entry narrowly). Any other structural failure (NaN,
    shape) is ``fails``."""

    observables: list[Literal[OBSERVABLES]] = Field(min_length=1)  # type: ignore[valid-type]
    absent: list[Literal[OBSERVABLES]] = Field(default_factory=list)  # type: ignore[valid-type]
    wrong_dtype: list[Literal[OBSERVABLES]] = Field(default_factory=list)  # type: ignore[valid-type]
    nan: list[Literal[OBSERVABLES]] = Field(default_factory=list)  # type: ignore[valid-type]
    max_ratio: float | dict[Literal[DTYPES], float]  # type: ignore[valid-type]
    derivation: str = Field(min_length=20)

    @field_validator("max_ratio")
    @classmethod
    def _above_one(cls, v):
        for r in (v.values() if isinstance(v, dict) else [v]):
            if not (1.0 < r < float("inf")):
                raise ValueError(f"a bound must be finite and > 1 (an error within tolerance passes): {r}")
        return v

    @model_validator(mode="after")
    def _absent_subset(self):
        for name in ("absent", "wrong_dtype", "nan"):
            extra = set(getattr(self, name)) - set(self.observables)
            if extra:
                raise ValueError(f"{name} {sorted(extra)} not among observables")
        return self

    def bound(self, dtype: str) -> float:
        """The bound for a case of input ``dtype`` (:class:`ExpectationError`-checked at load)."""
        return self.max_ratio[dtype] if isinstance(self.max_ratio, dict) else self.max_ratio


def _profile_knobs() -> set[str]:
    from .oracle import Profile

    return {f.name for f in dataclasses.fields(Profile)} - {"name"}


class Entry(_Strict):
    """One documented divergence (see the module docstring). ``file`` is set by the loader."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    kind: Literal["quirk", "known_bug", "rejection"]
    summary: str = Field(min_length=1)
    source: str = Field(min_length=1)
    issue: str | None = None
    finding: str | None = None
    versions: str = ""
    adapters: list[str] | None = Field(default=None, min_length=1)
    where: Where = Field(default_factory=Where)
    options: dict | None = None
    raises: str | None = None
    expected_failure: ExpectedFailure | None = None
    file: str = ""

    @field_validator("versions")
    @classmethod
    def _specifier(cls, v):
        try:
            SpecifierSet(v)
        except InvalidSpecifier as exc:
            raise ValueError(f"not a PEP 440 specifier set: {exc}") from None
        return v

    @field_validator("raises")
    @classmethod
    def _regex(cls, v):
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return v

    @field_validator("options")
    @classmethod
    def _knobs(cls, v):
        if v is None:
            return v
        if not v:
            raise ValueError("options must set at least one oracle Profile knob")
        unknown = set(v) - _profile_knobs()
        if unknown:
            raise ValueError(f"unknown oracle Profile knob(s) {sorted(unknown)}; known: {sorted(_profile_knobs())}")
        from .oracle import CANONICAL, Profile

        hints = typing.get_type_hints(Profile)
        for name, value in v.items():  # Literal-typed knobs: the value must be one of the literals
            if typing.get_origin(hints[name]) is Literal and value not in typing.get_args(hints[name]):
                raise ValueError(f"options.{name}={value!r} is not one of {list(typing.get_args(hints[name]))}")
        try:
            hash(CANONICAL.with_options("check", **v))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"options rejected by the oracle Profile: {exc}") from None
        return v

    @model_validator(mode="after")
    def _one_behaviour(self):
        given = [k for k in ("options", "raises", "expected_failure") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"exactly one of options, raises, expected_failure is required (got {given or 'none'})")
        if self.kind == "known_bug" and not (self.issue or self.finding):
            raise ValueError("a known_bug needs an upstream issue link or a findings/ reproduction")
        if self.kind == "rejection" and self.raises is None:
            raise ValueError("a rejection is an expected exception: it needs raises")
        if self.expected_failure is not None and self.kind != "known_bug":
            raise ValueError("expected_failure is a defect the oracle cannot model: kind must be known_bug")
        ef = self.expected_failure
        if ef is not None and isinstance(ef.max_ratio, dict):
            dtypes = set(self.where.dtype or DTYPES)
            if self.where.any_of:
                dtypes = {d for w in self.where.any_of for d in (w.dtype or dtypes)}
            if not dtypes <= set(ef.max_ratio):
                raise ValueError(f"expected_failure.max_ratio has no bound for dtype(s) "
                                 f"{sorted(dtypes - set(ef.max_ratio))} that where selects")
        return self

    @property
    def ref(self) -> str:
        """``expectations/flax.yaml#flax-biased-running-var``."""
        return f"{self.file}#{self.id}"

    def applies_to(self, version: str) -> bool:
        """Whether the entry is documented for ``version`` of the framework.

        Raises :class:`VersionUnparseable` when a range is given and
        ``version`` is not PEP 440 (a range can never be decided for it).
        """
        if not self.versions:
            return True
        try:
            return Version(version) in SpecifierSet(self.versions)
        except InvalidVersion:
            raise VersionUnparseable(
                f"framework version {version!r} is not PEP 440: cannot decide whether {self.ref} "
                f"(versions {self.versions!r}) applies") from None

    def to_dict(self) -> dict:
        """The record form (``ResultRecord.divergences``)."""
        ef = self.expected_failure
        return {"id": self.id, "kind": self.kind, "summary": self.summary, "source": self.source,
                "options": dict(self.options or {}), "versions": self.versions, "issue": self.issue,
                "finding": self.finding, "observables": list(ef.observables) if ef else [],
                "max_ratio": ef.max_ratio if ef else None, "absent": list(ef.absent) if ef else [],
                "wrong_dtype": list(ef.wrong_dtype) if ef else [], "nan": list(ef.nan) if ef else [],
                "derivation": ef.derivation if ef else None,
                "raises": self.raises, "file": self.file, "ref": self.ref,
                "where": self.where.model_dump(exclude_none=True)}


class _FileModel(_Strict):
    groups: list[str] = Field(default_factory=list)
    description: str = ""
    entries: list[dict] = Field(default_factory=list)


@dataclass(frozen=True)
class ExpectationsFile:
    """One loaded file: ``path`` (as shown in records), the BUILTIN ``groups``
    it covers, its entries in file order."""

    path: str
    groups: tuple[str, ...]
    entries: tuple[Entry, ...]

    def for_adapter(self, name: str, rows: frozenset[str]) -> tuple[Entry, ...]:
        """The entries that apply to the row ``name``; ``rows`` are the rows an
        entry without ``adapters`` applies to."""
        return tuple(e for e in self.entries
                     if (name in e.adapters if e.adapters is not None else name in rows))


def load_file(path: str | Path, root: str | Path | None = ROOT,
              known_adapters: set[str] | None = None) -> ExpectationsFile:
    """Load and validate one expectations file.

    ``known_adapters``: when given, every name in an entry's ``adapters``
    must be one of them. Raises :class:`ExpectationError` (file, entry id,
    field) for YAML syntax errors, unknown fields, wrong types, an entry
    without exactly one behaviour, unknown oracle knobs, a bad PEP 440 range
    or regex, duplicate ids and unknown adapters.
    """
    path = Path(path)
    shown = str(path.relative_to(root)) if root and path.is_absolute() and path.is_relative_to(root) else str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ExpectationError(shown, f"cannot read: {exc}") from None
    return parse(text, shown, known_adapters)


def parse(text: str, shown: str, known_adapters: set[str] | None = None) -> ExpectationsFile:
    """Validate the YAML ``text`` of an expectations file shown as ``shown``
    (errors as :func:`load_file`)."""
    raw = load_yaml(text, shown, ExpectationError)
    if not isinstance(raw, dict):
        raise ExpectationError(shown, "top level must be a mapping with 'groups' and 'entries'")
    try:
        meta = _FileModel.model_validate(raw)
    except ValidationError as exc:
        raise ExpectationError.from_validation(shown, exc, None) from None
    entries, seen = [], {}
    for index, data in enumerate(meta.entries):
        if not isinstance(data, dict):
            raise ExpectationError(shown, "each entry must be a mapping", f"#{index}", f"entries[{index}]")
        entry_id = data.get("id") if isinstance(data.get("id"), str) else f"#{index}"
        if "file" in data:
            raise ExpectationError(shown, "'file' is set by the loader", entry_id, "file")
        try:
            entry = Entry.model_validate({**data, "file": shown})
        except ValidationError as exc:
            raise ExpectationError.from_validation(shown, exc, entry_id) from None
        rows = seen.setdefault(entry.id, [])
        if any(r is None or entry.adapters is None or set(r) & set(entry.adapters) for r in rows):
            raise ExpectationError(shown, "duplicate entry id (an id may repeat only with disjoint 'adapters', "
                                          "one selector per row)", entry.id, "id")
        if known_adapters is not None and entry.adapters:
            unknown = [a for a in entry.adapters if a not in known_adapters]
            if unknown:
                raise ExpectationError(shown, f"unknown adapter(s) {unknown}", entry.id, "adapters")
        rows.append(entry.adapters)
        entries.append(entry)
    return ExpectationsFile(shown, tuple(meta.groups), tuple(entries))


def _builtin() -> dict[str, tuple[str, str]]:
    from .adapter import builtin_registry

    return builtin_registry()


def _require_dir(directory: str | Path) -> None:
    """Raise :class:`ExpectationError` when the expectations ``directory`` does not
    exist: without it every documented divergence would silently be a failure."""
    if not Path(directory).is_dir():
        raise ExpectationError(str(directory), "the expectations directory does not exist (a broken install?)")


@functools.lru_cache(maxsize=None)
def builtin_files(directory: str = str(EXPECTATIONS_DIR)) -> tuple[ExpectationsFile, ...]:
    """Every ``*.yaml`` of ``directory`` (default ``expectations/``), validated
    against the BUILTIN rows; raises :class:`ExpectationError` for the first
    bad file, and when two files claim one group."""
    builtin = _builtin()
    files = tuple(load_file(p, ROOT, set(builtin)) for p in sorted(Path(directory).glob("*.yaml")))
    owner: dict[str, str] = {}
    groups = {g for _, g in builtin.values()}
    for f in files:
        if not f.groups:
            raise ExpectationError(f.path, "an expectations file of BUILTIN rows must list the groups it covers",
                                   field="groups")
        unknown = sorted(set(f.groups) - groups)
        if unknown:
            raise ExpectationError(f.path, f"unknown BUILTIN group(s) {unknown}", field="groups")
        for g in f.groups:
            if g in owner:
                raise ExpectationError(f.path, f"group {g!r} is already covered by {owner[g]}", field="groups")
            owner[g] = f.path
    return files


def validate_all(directory: str | Path = EXPECTATIONS_DIR) -> tuple[int, list[ExpectationError]]:
    """Validate every expectations file of ``directory``; returns (number of
    entries, errors) — every file's first error, not only the first file's
    (``bnconform validate``)."""
    builtin, errors, n = _builtin(), [], 0
    try:
        _require_dir(directory)
    except ExpectationError as exc:
        return 0, [exc]
    for p in sorted(Path(directory).glob("*.yaml")):
        try:
            n += len(load_file(p, ROOT, set(builtin)).entries)
        except ExpectationError as exc:
            errors.append(exc)
    if not errors:
        try:
            builtin_files.__wrapped__(str(directory))  # group coverage and overlaps
        except ExpectationError as exc:
            errors.append(exc)
    return n, errors


def for_adapter(adapter) -> tuple[Entry, ...]:
    """The entries that apply to an adapter (instance or class).

    A BUILTIN row (``adapter.name`` in ``adapters.BUILTIN``): the entries of
    the expectations file covering its group. A plug-in adapter: the file its
    class names in ``expectations`` (a path relative to the module that
    defines the class), every entry of which applies to it unless it lists
    ``adapters``. Otherwise: none.
    """
    name = adapter.name
    builtin = _builtin()
    if name in builtin:
        group = builtin[name][1]
        rows = frozenset(n for n, (_, g) in builtin.items() if g == group)
        f = file_for_group(group)
        return f.for_adapter(name, rows) if f else ()
    own = getattr(adapter, "expectations", None)
    if own:
        cls = adapter if isinstance(adapter, type) else type(adapter)
        path = Path(own)
        if not path.is_absolute():
            path = Path(inspect.getfile(cls)).resolve().parent / path
        return _plugin_file(str(path)).for_adapter(name, frozenset({name}))
    return ()


@functools.lru_cache(maxsize=None)
def file_for_group(group: str, directory: str = str(EXPECTATIONS_DIR)) -> ExpectationsFile | None:
    """The validated expectations file covering BUILTIN ``group`` (None when
    no file lists it). Only that file is validated: a broken file of another
    framework never stops this one's cells (``builtin_files`` checks them all,
    the project tests call it). Raises :class:`ExpectationError` when the
    owning file is malformed, when two files claim the group, and for any file
    that is not YAML at all (its groups cannot be told)."""
    _require_dir(directory)
    owners = []
    for p in sorted(Path(directory).glob("*.yaml")):
        try:
            raw = yaml.load(p.read_text(encoding="utf-8"), Loader=SAFE_LOADER)
        except (OSError, yaml.YAMLError):  # cannot tell which groups it covers: loud, with the file named
            load_file(p, ROOT)
            raise
        if isinstance(raw, dict) and isinstance(raw.get("groups"), list) and group in raw["groups"]:
            owners.append(p)
    if len(owners) > 1:
        raise ExpectationError(str(owners[1].relative_to(ROOT) if owners[1].is_relative_to(ROOT) else owners[1]),
                               f"group {group!r} is already covered by {owners[0].name}", field="groups")
    return load_file(owners[0], ROOT, set(_builtin())) if owners else None


@functools.lru_cache(maxsize=None)
def _plugin_file(path: str) -> ExpectationsFile:
    return load_file(path, ROOT)
