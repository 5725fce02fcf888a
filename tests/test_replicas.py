"""Synchronized BatchNorm across replicas (issue 18): the replica oracle checked
against the concatenated-batch oracle (the equivalence "R replicas with
synchronized BN == one replica with the concatenated batch" is CHECKED here,
not assumed), its gradients against finite differences, the catalogue's replica
cases against the NumPy control and its synchronized-BN mutants, and the rows
that run one replica against the replica cases (unsupported, with a reason)."""

from pathlib import Path

import numpy as np
import pytest

from bnconform import oracle
from bnconform.arrays import generate
from bnconform.catalogue import STATE_OBSERVABLES, Case, CatalogueError, load_catalogue, load_file
from bnconform.engine import run_cell
from bnconform.oracle import CANONICAL, SAFETY, UNIT_ROUNDOFF, simulate

from .numpy_bn import REPLICA_MUTANTS, NumpyBatchNorm

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = load_catalogue([ROOT / "cases"], ROOT)
REPLICA_CASES = [c for c in CATALOGUE.cases if c.replicas is not None]
SPLITS = [[4, 4], [5, 2, 1], [8, 0], [0, 3, 0, 5], [1, 7], [2, 2, 2, 2]]


def _case(replicas, shape=(8, 3, 2, 2), steps=None, dtype="float64", **layer):
    return Case.model_validate({
        "id": "t", "title": "t", "behaviour": "t", "source": [{"title": "test"}],
        "layer": {"num_features": shape[1], **layer},
        "input": {"shape": list(shape), "dtype": dtype, "seed": 7, "distribution": {"mean": [1.0, -2.0, 30.0][:shape[1]],
                                                                                    "std": [2.0, 0.5, 1.0][:shape[1]]}},
        "replicas": replicas,
        "steps": steps or [{"op": "forward", "mode": "train"}, {"op": "backward"}, {"op": "sgd_step", "lr": 0.1},
                           {"op": "forward", "mode": "train", "batch": 1}, {"op": "forward", "mode": "eval", "batch": 2}],
    })


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / (np.abs(b) + 1e-300), initial=0.0))


def _assert_equivalent(case):
    """The replica oracle equals the concatenated-batch oracle: outputs and input
    gradients elementwise, every replica's state row equals the one-replica state,
    parameter gradients equal the one-replica gradients (float64 rounding only)."""
    arrays = generate(case)
    sync = simulate(case, arrays)
    single = simulate(case.model_copy(update={"replicas": None}), arrays)
    assert set(sync.values) == set(single.values)
    for key, e in single.values.items():
        got = sync.values[key]
        if key[1] in STATE_OBSERVABLES:
            assert got.value.shape == (len(case.replicas),) + np.shape(e.value), key
            rows = got.value
        else:
            assert got.value.shape == np.shape(e.value), key
            rows = got.value[None]
        # Two float64 algorithms for one quantity (Chan's combination of per-replica partials vs.
        # two-pass on the whole batch): they may differ by rounding only, i.e. within the
        # tolerance model of bnconform/compare.py evaluated in float64 (u = 2^-53 for both the
        # accumulation and the storage, sqrt(m) growth, SAFETY 4, one storage rounding per step).
        m = case.input.reduction_size
        tol = SAFETY * UNIT_ROUNDOFF["float64"] * (np.sqrt(m) * np.abs(e.magnitude) + (key[0] + 1) * np.abs(e.value))
        for row in rows:
            assert np.all(np.abs(row - e.value) <= tol), (key, row, e.value)


@pytest.mark.parametrize("case", REPLICA_CASES, ids=lambda c: c.id)
def test_catalogue_replica_case_equals_concatenated_batch(case):
    _assert_equivalent(case)


@pytest.mark.parametrize("split", SPLITS, ids=str)
def test_random_splits_equal_concatenated_batch(split):
    _assert_equivalent(_case(split))


def test_equivalence_check_has_power():
    """The check above fails on a replica combination that is NOT the union's
    statistics (an unweighted average over uneven replicas): it can fail."""
    case = _case([5, 2, 1])
    arrays = generate(case)
    avg = simulate(case, arrays, CANONICAL.with_options("avg", replica_reduction="replica_average"))
    single = simulate(case.model_copy(update={"replicas": None}), arrays)
    assert _rel(avg.values[(0, "output")].value, single.values[(0, "output")].value) > 1e-3
    # ... and with equal per-replica counts the unweighted average IS the union's statistics.
    case = _case([4, 4])
    avg = simulate(case, generate(case), CANONICAL.with_options("avg", replica_reduction="replica_average"))
    assert _rel(avg.values[(0, "output")].value, simulate(case, generate(case)).values[(0, "output")].value) < 1e-12


def test_replica_stats_hand_derived():
    # replica 0: [0, 2] (mean 1, M2 2), replica 1: [4] (mean 4, M2 0), replica 2: empty.
    x = np.array([[0.0], [2.0], [4.0]])
    mean, var = oracle.replica_batch_stats(x, 1, [2, 1, 0])
    assert mean == pytest.approx([2.0]) and var == pytest.approx([8 / 3])
    # Unweighted: mean (1 + 4) / 2; variance ((1 + 1)/2 + (0 + 0)/1) / 2 around 2.5 ... with an
    # empty replica: NaN (0/0 mean of that replica).
    mean, var = oracle.replica_batch_stats(x, 1, [2, 1], "replica_average")
    assert mean == pytest.approx([2.5]) and var == pytest.approx([((2.5**2 + 0.5**2) / 2 + 1.5**2) / 2])
    assert np.isnan(oracle.replica_batch_stats(x, 1, [2, 1, 0], "replica_average")[0]).all()


@pytest.mark.parametrize("reduction", ["count_weighted", "replica_average"])
@pytest.mark.parametrize("split", [[3, 1, 2], [2, 2, 2]], ids=str)
def test_replica_backward_matches_finite_differences(reduction, split):
    """``replica_backward`` is the gradient of the forward it pairs with
    (``replica_batch_stats`` with the same reduction), in float64."""
    rng = np.random.default_rng(5)
    x, g = rng.normal(1.0, 2.0, (6, 2, 3)), rng.normal(size=(6, 2, 3))
    w, b, eps = np.array([1.5, -0.5]), np.array([0.2, 0.1]), 1e-3

    def loss():
        mean, var = oracle.replica_batch_stats(x, 1, split, reduction)
        return float((g * oracle.normalize(x, mean, var, eps, w, b, 1)).sum())

    mean, var = oracle.replica_batch_stats(x, 1, split, reduction)
    dx, dw, db = oracle.replica_backward(g, x, mean, var, eps, w, 1, split, reduction)
    num = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + 1e-6
        fp = loss()
        x[idx] = old - 1e-6
        fm = loss()
        x[idx] = old
        num[idx] = (fp - fm) / 2e-6
    np.testing.assert_allclose(dx, num, rtol=1e-6, atol=1e-7)
    xh = (x - mean[None, :, None]) / np.sqrt(var + eps)[None, :, None]
    np.testing.assert_allclose(dw, (g * xh).sum(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(db, g.sum(axis=(0, 2)), rtol=1e-12)


def test_input_gradient_depends_on_every_replicas_upstream_gradient():
    rng = np.random.default_rng(9)
    x, g = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    mean, var = oracle.replica_batch_stats(x, 1, [3, 3])
    dx0, _, _ = oracle.replica_backward(g, x, mean, var, 1e-5, np.ones(2), 1, [3, 3])
    g2 = g.copy()
    g2[3:] += 1.0  # replica 1's upstream gradient only
    dx1, _, _ = oracle.replica_backward(g2, x, mean, var, 1e-5, np.ones(2), 1, [3, 3])
    assert np.abs(dx1[:3] - dx0[:3]).max() > 1e-3  # replica 0's input gradient moved


def test_running_variance_uses_the_global_count():
    case = _case([4, 4], shape=(8, 3), steps=[{"op": "forward", "mode": "train"}], momentum=1.0)
    arrays = generate(case)
    rv = simulate(case, arrays).values[(0, "running_var")].value
    x = arrays.batches[0].astype(np.float64)
    assert rv.shape == (2, 3)
    np.testing.assert_allclose(rv, np.broadcast_to(x.var(axis=0, ddof=1), (2, 3)), rtol=1e-13)


def test_catalogue_has_the_replica_cases_issue_18_lists():
    assert len(REPLICA_CASES) >= 8
    splits = [c.replicas for c in REPLICA_CASES]
    assert any(len(set(s)) == 1 for s in splits)                       # equal
    assert any(len(set(s)) > 1 for s in splits)                        # uneven
    assert any(0 in s for s in splits)                                 # an empty replica
    assert any(c.input.reduction_size // c.input.shape[0] == 1 and 1 in c.replicas for c in REPLICA_CASES)
    modes = {s.mode for c in REPLICA_CASES for s in c.steps if s.op == "forward"}
    assert modes == {"train", "eval", "train_global_stats"}
    assert any("bias" in c.layer.frozen for c in REPLICA_CASES)


@pytest.mark.parametrize("bad,msg", [({"replicas": [4, 3]}, "sum to 7"), ({"replicas": [8]}, "at least 2"),
                                     ({"replicas": [9, -1]}, ">= 0")])
def test_replicas_are_validated(tmp_path, bad, msg):
    case = {"id": "r", "title": "t", "behaviour": "b", "source": [{"title": "s"}], "layer": {"num_features": 2},
            "input": {"shape": [8, 2]}, "steps": [{"op": "forward", "mode": "train"}], **bad}
    import yaml

    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump({"theme": "t", "cases": [case]}))
    with pytest.raises(CatalogueError, match=msg) as info:
        load_file(f)
    assert info.value.field in (None, "replicas")


def test_control_conforms_on_replica_cases():
    bad = [(c.id, r.verdict, r.reason) for c in REPLICA_CASES for r in [run_cell(c, NumpyBatchNorm(), "0")]
           if r.verdict != "conforms"]
    assert bad == []


@pytest.mark.parametrize("mutant", REPLICA_MUTANTS, ids=lambda m: m.name)
def test_synchronized_bn_mutant_fails(mutant):
    """Issue 18: a synchronized BN that all-reduces only the mean, and one that
    uses the per-replica count in Bessel's correction, are each reported ``fails``
    — on replica cases, since they ARE correct on one replica."""
    verdicts = {c.id: run_cell(c, mutant(), "0").verdict for c in REPLICA_CASES}
    assert "fails" in verdicts.values(), verdicts
    assert set(verdicts.values()) <= {"fails", "conforms"}
    one_replica = [c for c in CATALOGUE.cases if c.replicas is None][:20]
    assert all(run_cell(c, mutant(), "0").verdict in ("conforms", "unsupported") for c in one_replica)


def test_one_replica_rows_report_replica_cases_unsupported():
    class OneReplica(NumpyBatchNorm):
        name, runs_replicas = "numpy one replica", False

    for c in REPLICA_CASES:
        r = run_cell(c, OneReplica(), "0")
        assert r.verdict == "unsupported" and "replicas" in r.reason and "numpy one replica" in r.reason


def test_empty_replica_skip_keeps_that_replicas_initial_running_stats():
    """``empty_replica_update: skip`` (tf-keras' zero-size guard): the empty replica's
    state row stays at the initial running statistics, the others move; canonically
    every row moves alike."""
    case = _case([5, 0, 3], steps=[{"op": "forward", "mode": "train"}, {"op": "forward", "mode": "train", "batch": 1}])
    arrays = generate(case)
    skip = simulate(case, arrays, CANONICAL.with_options("skip", empty_replica_update="skip"))
    canon = simulate(case, arrays)
    for step in (0, 1):
        for name in ("running_mean", "running_var"):
            got, ref = skip.values[(step, name)].value, canon.values[(step, name)].value
            np.testing.assert_array_equal(got[1], arrays.init[name].astype(np.float64))
            np.testing.assert_array_equal(got[[0, 2]], ref[[0, 2]])
            assert np.abs(ref[1] - got[1]).max() > 1e-3
    # Without an empty replica the knob changes nothing.
    case = _case([5, 3], steps=[{"op": "forward", "mode": "train"}])
    a = simulate(case, generate(case), CANONICAL.with_options("skip", empty_replica_update="skip"))
    np.testing.assert_array_equal(a.values[(0, "running_var")].value,
                                  simulate(case, generate(case)).values[(0, "running_var")].value)
