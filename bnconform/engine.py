"""Runs one cell — (case, adapter) — through oracle, adapter and comparison,
and returns the verdict as a :class:`~bnconform.results.ResultRecord`.

Verdict rules (one vocabulary everywhere):

* ``unsupported`` — the adapter says the framework cannot express the case
  (reason kept); a replica case (``Case.replicas``, synchronized BatchNorm)
  on a row without ``Adapter.runs_replicas`` (it runs one replica).
* ``error`` — the framework raised (type, message and the last traceback
  lines kept).
* ``conforms`` — every observed value matches the canonical oracle.
* ``quirk`` / ``known_bug`` — the expectations file of the adapter
  (:mod:`bnconform.expect`, ``expectations/<framework>.yaml``) documents
  divergences for this framework version whose selector picks this case, AND
  they manifest on it (the oracle run with their options differs from the
  canonical one) AND the framework matches that divergent oracle exactly.
  ``known_bug`` if any manifesting divergence is a known bug. An
  ``expected_failure`` entry (a defect the oracle cannot model) must fail
  exactly its observables, by at most its ``max_ratio`` times the tolerance.
  An entry with ``raises`` demands that exception.
* Undefined cases (the oracle raises :class:`OracleUndefined`): ``conforms``
  only when the framework raises an exception matching one of its documented
  ``rejection`` entries; any other exception is ``error``, returning values
  is ``fails``.
* ``error`` also when the framework version is not PEP 440 and an entry has
  a version range (it cannot be decided: fail closed).
* ``fails`` — anything else, in particular a documented divergence that no
  longer reproduces (the framework now matches the canonical oracle), or a
  known bug that got worse than its bound: the behaviour changed and the gate
  must notice.

Every divergence a record shows carries its ``file`` and ``ref``
(``expectations/flax.yaml#flax-biased-running-var``).
"""

from __future__ import annotations

import copy
import numbers
import re
import time
import traceback
from collections.abc import Sequence

from .adapter import Adapter
from .arrays import CaseArrays, generate
from .catalogue import OBSERVABLES, Case
from .compare import NAN_WHERE_VALUE, compare, compare_one, expectations_agree
from .drive import run_program
from .expect import Entry, VersionUnparseable, for_adapter
from .oracle import CANONICAL, Expectation, OracleUndefined, Profile, merge_options, simulate
from .results import ResultRecord, current_env

#: compare_one's message for an observable the adapter did not return.
NO_VALUE = "adapter returned no value"


# Per-process caches: every adapter of a worker shares one generation and one
# oracle run per (case, profile). Keyed by the case's JSON (cases are values).
_ARRAYS: dict[str, CaseArrays] = {}
_EXPECT: dict[tuple[str, Profile], Expectation | OracleUndefined] = {}


#: The large case (:attr:`Case.large`) whose arrays and expectations are cached: only
#: one at a time (a 2^21-values-per-channel case holds ~100 MB of float64 expectations;
#: its cells run one after another, so keeping the latest one shares it between them).
_LARGE: list[str] = []


def _keep_one_large(case: Case, key: str) -> None:
    """Before caching anything for a large ``case``, drop what the caches hold
    for any OTHER large case (small cases stay cached for the whole process)."""
    if not case.large or _LARGE == [key]:
        return
    for old in _LARGE:
        _ARRAYS.pop(old, None)
        for cache in (_EXPECT, _AGREE):
            for k in [k for k in cache if k[0] == old]:
                del cache[k]
    _LARGE[:] = [key]


def _arrays(case: Case) -> CaseArrays:
    key = case.model_dump_json()
    if key not in _ARRAYS:
        _keep_one_large(case, key)
        _ARRAYS[key] = generate(case)
    return _ARRAYS[key]


def _expect(case: Case, profile: Profile) -> Expectation | OracleUndefined:
    key = (case.model_dump_json(), profile)
    if key not in _EXPECT:
        _keep_one_large(case, key[0])
        try:
            _EXPECT[key] = simulate(case, _arrays(case), profile)
        except OracleUndefined as exc:
            _EXPECT[key] = exc
    return _EXPECT[key]


_AGREE: dict[tuple[str, Profile, Profile, frozenset[str]], bool] = {}


def _agree(case: Case, a: Profile, b: Profile, observable: frozenset[str]) -> bool:
    """Whether oracle profiles ``a`` and ``b`` are indistinguishable on ``case``
    within tolerance (:func:`expectations_agree`; False where either is
    undefined). A function of the case and the profiles only: computed once
    per process, not once per adapter (an adapter with several quirks asks
    several times per case)."""
    key = (case.model_dump_json(), a, b, observable)
    if key not in _AGREE:
        _keep_one_large(case, key[0])
        ea, eb = _expect(case, a), _expect(case, b)
        _AGREE[key] = (not isinstance(ea, OracleUndefined) and not isinstance(eb, OracleUndefined)
                       and expectations_agree(ea, eb, case, observable))
    return _AGREE[key]


def clear_caches() -> None:
    """Forget the per-process arrays and oracle runs (:func:`run_cell` fills
    them per case): a caller that runs thousands of generated cases
    (:mod:`bnconform.explore`) frees them between searches."""
    _ARRAYS.clear()
    _EXPECT.clear()
    _AGREE.clear()


def profile_for(divergences: list[Entry]) -> Profile:
    """The oracle profile with every listed divergence's options applied
    (:func:`~bnconform.oracle.merge_options`: mapping knobs merge key by key)."""
    options = merge_options(d.options for d in divergences)
    if not options:
        return CANONICAL
    return CANONICAL.with_options("+".join(d.id for d in divergences), **options)


def _error_text(exc: BaseException) -> str:
    tail = traceback.format_exception(type(exc), exc, exc.__traceback__)[-4:]
    return f"{type(exc).__name__}: {exc}\n" + "".join(tail)[-2000:]


def case_fields(case: Case) -> dict:
    """The record fields that describe the case."""
    return dict(case_id=case.id, case_file=case.file, theme=case.theme, title=case.title, behaviour=case.behaviour,
                tags=list(case.tags), sources=[s.model_dump(exclude_none=True) for s in case.source])


def error_record(case: Case, adapter: str, framework: str, version: str, message: str,
                 device: str = "cpu", nodeid: str | None = None, duration_s: float = 0.0,
                 framework_build: str | None = None) -> ResultRecord:
    """An ``error`` record for a cell whose run never returned: it timed out or
    crashed its process (recorded by the pytest plugin)."""
    return ResultRecord(**case_fields(case), adapter=adapter, framework=framework, framework_version=version,
                        framework_build=framework_build, device=device, env=current_env(), nodeid=nodeid,
                        verdict="error", reason=message, duration_s=duration_s)


def run_cell(case: Case, adapter: Adapter, framework_version: str | None = None, nodeid: str | None = None,
             expectations: Sequence[Entry] | None = None, framework_build: str | None = None) -> ResultRecord:
    """Run one cell and return its record. Never raises for framework or
    adapter failures (they become ``error``/``fails``); raises only for bugs in
    bnconform itself (and :class:`~bnconform.expect.ExpectationError` for a
    malformed expectations file).

    ``expectations``: the documented divergences of this adapter; default
    :func:`bnconform.expect.for_adapter` (its ``expectations/*.yaml`` entries).
    ``framework_build``: build/runtime details recorded beside the version
    (:meth:`~bnconform.adapter.Adapter.framework_build`).
    """
    start = time.perf_counter()
    version = framework_version if framework_version is not None else adapter.framework_version()
    base = dict(**case_fields(case), adapter=adapter.name, framework=adapter.framework, framework_version=version,
                framework_build=framework_build, device=adapter.device, env=current_env(), nodeid=nodeid)

    def record(verdict: str, reason: str | None = None, **extra) -> ResultRecord:
        return ResultRecord(**base, verdict=verdict, reason=reason, duration_s=time.perf_counter() - start, **extra)

    if case.replicas is not None and not getattr(adapter, "runs_replicas", False):
        return record("unsupported", f"{adapter.name} runs BatchNorm on one replica: this case is synchronized "
                                     f"BatchNorm over {len(case.replicas)} replicas (per-replica batch sizes "
                                     f"{case.replicas}), run by the rows on a distributed runtime")
    if case.pre is not None and case.pre.kind not in adapter.blocks:
        reason = (f"{adapter.name} runs a BatchNorm alone; this composite case puts a {case.pre.kind} layer "
                  "before it (a block the adapter does not build: Adapter.blocks)")
    else:
        reason = adapter.capabilities(case)
    if reason:
        return record("unsupported", reason)
    entries = for_adapter(adapter) if expectations is None else tuple(expectations)
    try:
        applicable = [e for e in entries if e.where.matches(case) and e.applies_to(version)]
    except VersionUnparseable as exc:
        return record("error", str(exc))
    rejections = [e for e in applicable if e.kind == "rejection"]   # documented refusals of undefined cases
    raising = [e for e in applicable if e.raises and e.kind != "rejection"]  # the framework must raise here
    documented = [e for e in applicable if e.options]                # reproduced by oracle options
    expected_failures = [e for e in applicable if e.expected_failure]  # defects the oracle cannot model
    canonical = _expect(case, CANONICAL)
    declared = profile_for(documented)
    divergent = _expect(case, declared) if declared is not CANONICAL else canonical
    undefined = isinstance(canonical, OracleUndefined) and isinstance(divergent, OracleUndefined)
    try:
        if raising:
            try:
                run_program(adapter, case, copy.deepcopy(_arrays(case)))
            except Exception as exc:  # noqa: BLE001
                text = f"{type(exc).__name__}: {exc}"
                match = [d for d in raising if re.search(d.raises, text)]
                if not match:
                    return record("error", _error_text(exc), divergences=[d.to_dict() for d in raising])
                verdict = "known_bug" if any(d.kind == "known_bug" for d in match) else "quirk"
                return record(verdict, "; ".join(f"{d.id}: {d.summary}" for d in match) + f" — raised {text[:300]}",
                              divergences=[d.to_dict() for d in match])
            return record("fails", "behaviour changed: expected to raise ("
                          + "; ".join(f"{d.id}: /{d.raises}/" for d in raising) + ") but it returned values",
                          divergences=[d.to_dict() for d in raising])
        # A private copy: an adapter that writes into its inputs cannot corrupt
        # the oracle's arrays or the next cell's.
        observations = run_program(adapter, case, copy.deepcopy(_arrays(case)))
    except Exception as exc:  # noqa: BLE001 - any framework failure is a verdict
        if undefined:
            text = f"{type(exc).__name__}: {exc}"
            match = [d for d in rejections if re.search(d.raises, text)]
            if match:
                return record("conforms", f"the oracle finds this case undefined ({canonical}) and the framework "
                                          f"rejects it as documented ({', '.join(d.ref for d in match)}): {text[:300]}",
                              divergences=[d.to_dict() for d in match])
            documented_as = ("; documented rejections: " + ", ".join(f"{d.ref} /{d.raises}/" for d in rejections)
                             if rejections else "; no documented rejection applies")
            return record("error", f"the oracle finds this case undefined ({canonical}) but the framework raised an "
                                   f"undocumented exception{documented_as}\n" + _error_text(exc))
        return record("error", _error_text(exc))
    contract = _check_observations(observations)
    if contract:
        return record("error", contract)
    if undefined:
        return record("fails", f"the oracle finds this case undefined ({canonical}) but the framework "
                               "returned values instead of raising")
    observable = adapter.observables
    canon_cmp, not_observed = (compare(canonical, observations, case, observable)
                               if not isinstance(canonical, OracleUndefined) else ([], []))
    canon_ok = not isinstance(canonical, OracleUndefined) and all(c.passed for c in canon_cmp)
    dicts = lambda cs: [c.to_dict() for c in cs]  # noqa: E731

    manifest: list[Entry] = []
    if declared is not CANONICAL and not isinstance(divergent, OracleUndefined):
        if not _agree(case, CANONICAL, declared, observable):
            # Which documented divergences matter here: dropping one changes the expectation.
            for d in documented:
                if not _agree(case, profile_for([o for o in documented if o is not d]), declared, observable):
                    manifest.append(d)
            manifest = manifest or documented
    if manifest:
        judged, against = compare(divergent, observations, case, observable)[0], \
            f"oracle with documented divergence(s) {', '.join(d.id for d in manifest)}"
        extra = dict(comparisons=dicts(judged), canonical_comparisons=dicts(canon_cmp))
    else:
        judged, against, extra = canon_cmp, "canonical oracle", dict(comparisons=dicts(canon_cmp))
    if not judged:
        # Nothing compared: no verdict about behaviour can be given (never `conforms`).
        return record("unsupported", f"observes none of what this case checks (the case observes "
                                     f"{', '.join(case.observe)}; the adapter can observe "
                                     f"{', '.join(sorted(observable)) or 'nothing'})", **extra)
    failed = [c for c in judged if not c.passed]
    shown = manifest + expected_failures
    extra.update(not_observed=not_observed, divergences=[d.to_dict() for d in shown])

    if expected_failures:
        # Strict expected failure: the defect must show, only where documented, and within its bound.
        bound: dict[str, float] = {}
        absent: set[str] = set()
        wrong_dtype: set[str] = set()
        nan: set[str] = set()
        for d in expected_failures:
            ef = d.expected_failure
            absent |= set(ef.absent)
            wrong_dtype |= set(ef.wrong_dtype)
            nan |= set(ef.nan)
            for o in ef.observables:
                bound[o] = max(bound.get(o, 0.0), ef.bound(case.input.dtype))
        names = ", ".join(d.id for d in expected_failures)
        if not failed:
            return record("fails", f"behaviour changed: known bug(s) {names} no longer reproduce", **extra)
        outside = [c for c in failed if c.observable not in bound]
        if outside:
            return record("fails", _summarise(outside, against), **extra)
        # The structural failures an entry documents: no value at all (absent), NaN for a value (nan).
        documented = lambda c: ((c.observable in absent and c.message == NO_VALUE)  # noqa: E731
                                or (c.observable in nan and (c.message or "").startswith(NAN_WHERE_VALUE)))
        reference = divergent if manifest else canonical

        def values_judged(c):
            """A documented wrong dtype: the values are judged anyway, against the bound."""
            if c.observable in wrong_dtype and (c.message or "").startswith("dtype "):
                exp = reference.values[(c.step, c.observable)]
                return compare_one(observations.get((c.step, c.observable)), exp.value, exp.magnitude,
                                   c.observable, case, c.step, check_dtype=False, spread=exp.spread)
            return c

        # A structural failure (NaN, wrong shape or dtype) or an error beyond the bound: worse than documented.
        worse = [v for v in map(values_judged, failed)
                 if not documented(v) and (v.message or not v.ratio <= bound[v.observable])]
        if worse:
            return record("fails", f"known bug(s) {names} got worse than documented: "
                          + "; ".join(f"step {c.step} {c.op} {c.observable}: "
                                      + (c.message or f"x{c.ratio:.3g} > bound x{bound[c.observable]:.3g}")
                                      for c in worse[:3]), **extra)
        return record("known_bug", "; ".join(f"{d.id}: {d.summary}" for d in shown) + " — "
                      + _summarise(failed, against), **extra)
    if not manifest:
        if not failed:
            return record("conforms", **extra)
        return record("fails", _summarise(failed, against), **extra)
    if not failed:
        verdict = "known_bug" if any(d.kind == "known_bug" for d in manifest) else "quirk"
        return record(verdict, "; ".join(f"{d.id}: {d.summary}" for d in manifest), **extra)
    if canon_ok:
        names = ", ".join(d.id for d in manifest)
        return record("fails", f"behaviour changed: documented divergence(s) {names} no longer reproduce — "
                               f"the framework now matches the canonical oracle", **extra)
    return record("fails", _summarise(failed, against), **extra)


def _check_observations(observations) -> str | None:
    """Why ``observations`` (what ``Adapter.run`` returned) breaks the adapter
    contract — not a dict keyed ``(int step_index, observable name)`` with
    known observable names — or None. Values are checked per comparison. The
    cell becomes ``error`` with this reason (never a crash of the run, never
    mistaken for a framework rejecting an undefined case)."""
    if not isinstance(observations, dict):
        return (f"adapter contract: run() returned {type(observations).__name__}, expected a dict "
                f"{{(step_index, observable): array}}")
    bad = [k for k in observations if not (isinstance(k, tuple) and len(k) == 2 and isinstance(k[0], numbers.Integral)
                                           and not isinstance(k[0], bool) and k[1] in OBSERVABLES)]
    if bad:
        return (f"adapter contract: run() returned unknown keys {bad[:5]!r} (keys are (step_index, observable) "
                f"with observable one of {', '.join(OBSERVABLES)})")
    return None


def _summarise(failed, against: str) -> str:
    parts = []
    for c in failed[:3]:
        detail = c.message or f"max abs err {c.max_abs_err:.3g} > tol {c.tol_at_worst:.3g} (x{c.ratio:.3g})"
        parts.append(f"step {c.step} {c.op} {c.observable}: {detail}")
    more = f" (+{len(failed) - 3} more)" if len(failed) > 3 else ""
    return f"differs from the {against}: " + "; ".join(parts) + more
