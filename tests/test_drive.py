"""The one step interpreter (bnconform/drive.py): what it owns, on a recording fake adapter."""

import numpy as np
import pytest

from bnconform.adapter import Adapter
from bnconform.arrays import generate
from bnconform.drive import interpret, run_program
from bnconform.engine import run_cell

from .numpy_bn import NumpyBatchNorm
from .test_oracle import make_case

PROGRAM = [{"op": "forward", "mode": "train"}, {"op": "backward"}, {"op": "backward"}, {"op": "sgd_step", "lr": 0.1},
           {"op": "forward", "mode": "eval"}]


class Recorder(Adapter):
    """Returns constants and records every hook call."""

    name = "recorder"

    def build(self, cell):
        cell.calls = self.calls = [("build",)]
        self.cell = cell

    def forward(self, cell, x, mode):
        cell.calls.append(("forward", mode))
        return np.zeros_like(x)

    def backward(self, cell, grad_output, retain):
        cell.calls.append(("backward", retain))
        return np.zeros_like(grad_output), {"weight": np.ones(3), "bias": np.ones(3)}

    def sgd_step(self, cell, lr):
        cell.calls.append(("sgd_step", lr, cell.trainable))

    def state(self, cell):
        return {n: np.full(3, 2.0) for n in ("running_mean", "running_var", "weight", "bias")} | {
            "num_batches_tracked": np.asarray(1)}


def _run(adapter, steps=PROGRAM, **layer):
    c = make_case(steps, layer or None)
    return interpret(adapter, c, generate(c))


def test_hooks_called_in_program_order_with_retain_graph():
    a = Recorder()
    _run(a)
    assert a.calls == [("build",), ("forward", "train"), ("backward", True), ("backward", False),
                       ("sgd_step", 0.1, ("weight", "bias")), ("forward", "eval")]


def test_state_after_every_step_only_where_observable():
    obs = _run(Recorder())
    assert {k for k in obs if k[1] == "running_mean"} == {(i, "running_mean") for i in range(len(PROGRAM))}
    untracked = _run(Recorder(), track_running_stats=False)
    assert not {n for _, n in untracked} & {"running_mean", "running_var", "num_batches_tracked"}
    plain = _run(Recorder(), affine=False)
    assert not {n for _, n in plain} & {"weight", "bias", "grad_weight", "grad_bias"}

    class NoCounter(Recorder):
        observables = Recorder.observables - {"num_batches_tracked"}

    assert not any(n == "num_batches_tracked" for _, n in _run(NoCounter()))


def test_frozen_gradient_not_observed_and_optimizer_told_what_trains():
    a = Recorder()
    obs = _run(a, frozen=["weight"])
    assert (1, "grad_bias") in obs and (1, "grad_weight") not in obs
    assert ("sgd_step", 0.1, ("bias",)) in a.calls
    # All frozen: the step still reaches the hook (mask idioms step; list idioms build nothing).
    a = Recorder()
    _run(a, frozen=["weight", "bias"])
    assert ("sgd_step", 0.1, ()) in a.calls
    # No parameters at all: nothing to step.
    a = Recorder()
    _run(a, affine=False)
    assert not any(c[0] == "sgd_step" for c in a.calls)


def test_returned_arrays_are_private_copies():
    class Aliasing(Recorder):
        def state(self, cell):
            cell.buffer = getattr(cell, "buffer", np.zeros(3))
            cell.buffer += 1.0  # a framework updating its buffer in place
            return {"running_mean": cell.buffer}

    obs = _run(Aliasing())
    assert [float(obs[(i, "running_mean")][0]) for i in range(len(PROGRAM))] == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_bfloat16_values_come_back_as_float32():
    ml_dtypes = pytest.importorskip("ml_dtypes")

    class Bf16(Recorder):
        def forward(self, cell, x, mode):
            return np.asarray(x).astype(ml_dtypes.bfloat16)

    obs = _run(Bf16(), steps=PROGRAM[:1])
    assert obs[(0, "output")].dtype == np.float32


def test_legacy_run_still_called_and_hookless_adapter_named():
    class Legacy(Adapter):
        name = "legacy"

        def run(self, case, arrays):
            return {"legacy": True}

    c = make_case(PROGRAM[:1])
    assert run_program(Legacy(), c, generate(c)) == {"legacy": True}

    class Nothing(Adapter):
        name = "implements nothing"

    r = run_cell(c, Nothing(), "1")
    assert r.verdict == "error" and "implements neither run() nor the build() hook" in r.reason
    assert run_cell(c, NumpyBatchNorm(), "1").verdict == "conforms"
