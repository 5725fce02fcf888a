"""The ONE step interpreter: runs a case's step program through an adapter's hooks.

An adapter translates; this module owns what a step MEANS (``catalogue.py``
``Forward``, ``Backward``, ``SgdStep``) and what comes back (the contract in
the :mod:`bnconform.adapter` module docstring). For each cell::

    with adapter.scope(case):                 # process-wide switches for the cell
        adapter.build(cell)                   # one fresh layer, initial state from arrays.init
        for i, step in enumerate(case.steps):
            forward:  output      = adapter.forward(cell, x, mode)
            backward: grad_input, {name: grad} = adapter.backward(cell, grad_output, retain)
            sgd_step: adapter.sgd_step(cell, lr)        # only for an affine layer
            every step: adapter.state(cell) -> {running_mean, running_var,
                                                num_batches_tracked, weight, bias}

Semantics owned here (adapters must not re-decide them):

* ``x`` / ``grad_output`` are the case's NumPy arrays (``arrays.batches[k]``,
  ``arrays.grad_outputs[i]``) in storage dtype — bfloat16 travels as float32
  holding bfloat16 values —, shape ``(N, C, *)`` with the channel at
  ``case.input.channel_axis``; the hook casts them to ``case.input.dtype``.
* ``mode`` is the step's ``train`` / ``eval`` / ``train_global_stats``;
  :func:`uses_batch_stats` and :func:`updates_running_stats` say what it
  means for the case (``track_running_stats: false`` -> batch statistics in
  every mode, nothing kept).
* Backward: gradients are FRESH (the hook overwrites, never accumulates);
  ``retain`` is True when another backward through the same forward follows
  (``Case.backward_follows``), as a user would pass ``retain_graph``. Only the
  gradients of :attr:`Cell.trainable` parameters are observed (a frozen
  parameter's gradient is not compared); a ``None`` gradient is left out (the
  comparison reports it missing).
* ``sgd_step`` runs on every ``SgdStep`` of an ``affine`` layer (nothing to
  update otherwise), with the gradients of the latest backward; the hook
  updates exactly :attr:`Cell.trainable`, keeping ``layer.frozen`` fixed by the
  framework's own idiom: left out of the optimizer's list (then an empty
  ``cell.trainable`` means no optimizer at all, as a user would write it) or
  masked inside the optimizer (``lr_mult = 0``, ``optax.set_to_zero``), which
  still steps — so an optimizer that ignores its mask is seen.
* State is read back after EVERY step; ``running_mean`` / ``running_var`` /
  ``num_batches_tracked`` only with ``track_running_stats``, ``weight`` /
  ``bias`` only with ``affine``, and only what ``adapter.observables`` lists.
* Returned arrays: NumPy copies (``adapter.to_numpy``, then copied: a buffer
  the framework updates in place cannot change an earlier observation);
  bfloat16 (``ml_dtypes`` or TensorFlow's) becomes float32 (exact). No other
  dtype conversion: the comparison checks storage dtypes.
* An empty batch (N = 0) is passed like any other; what the framework does
  with it is observed, not special-cased here.

Raises whatever a hook raises (the engine turns it into an ``error`` cell, or
matches it against a documented expected exception).

``Cell.needs_grad`` says whether the program has a backward (a forward then
records what the backward needs, e.g. a ``GradientTape``). Functional
frameworks (JAX, a graph built per case) keep their per-cell state as
attributes of the :class:`Cell` (e.g. ``cell.stats``, ``cell.vjp``).

A legacy adapter that overrides ``run(case, arrays)`` itself is still called
as before (:func:`run_program`), so a partial conversion stays runnable.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import numpy as np

from .catalogue import Backward, Case, Forward, SgdStep

if TYPE_CHECKING:  # pragma: no cover
    from .adapter import Adapter, Observations
    from .arrays import CaseArrays

#: Parameters of an affine BatchNorm, in the order optimizers index them.
PARAMS = ("weight", "bias")
#: State observables that exist only with ``track_running_stats``.
RUNNING = frozenset({"running_mean", "running_var", "num_batches_tracked"})


def uses_batch_stats(case: Case, mode: str) -> bool:
    """Whether a forward in ``mode`` normalises with the batch statistics:
    ``train``, or any mode of a layer with ``track_running_stats: false``."""
    return mode == "train" or not case.layer.track_running_stats


def updates_running_stats(case: Case, mode: str) -> bool:
    """Whether a forward in ``mode`` updates the running statistics."""
    return mode == "train" and case.layer.track_running_stats


class Cell:
    """The per-cell context handed to every hook: the case, its arrays, what
    the interpreter decided about the program, and whatever framework objects
    the adapter's :meth:`~bnconform.adapter.Adapter.build` stores on it (any
    attribute name; one :class:`Cell` per run, never shared between cells)."""

    def __init__(self, case: Case, arrays: CaseArrays):
        self.case, self.arrays = case, arrays
        L = case.layer
        #: affine parameters the optimizer updates and whose gradients are observed
        self.trainable: tuple[str, ...] = tuple(n for n in PARAMS if L.affine and n not in L.frozen)
        #: the parameters held fixed (``layer.frozen``; empty without ``affine``)
        self.frozen: tuple[str, ...] = tuple(n for n in PARAMS if L.affine and n in L.frozen)
        #: the program has a backward: forwards must record what it needs
        self.needs_grad: bool = any(isinstance(s, Backward) for s in case.steps)
        #: the modes of the program's forwards
        self.modes: frozenset[str] = frozenset(s.mode for s in case.steps if isinstance(s, Forward))

    @property
    def dtype(self) -> str:
        """The input (compute) dtype name, e.g. ``"bfloat16"``."""
        return self.case.input.dtype

    @property
    def param_dtype(self) -> str:
        """The dtype of parameters and running statistics (``arrays.param_dtype``)."""
        return self.arrays.param_dtype

    def init(self, name: str) -> np.ndarray:
        """Initial value of ``running_mean`` / ``running_var`` / ``weight`` / ``bias``
        in the parameter dtype (a fresh array; ``weight`` = 1, ``bias`` = 0
        without ``affine``)."""
        if not self.case.layer.affine and name in PARAMS:
            return np.full(self.case.layer.num_features, 1.0 if name == "weight" else 0.0, dtype=self.param_dtype)
        return np.array(self.arrays.init[name], dtype=self.param_dtype)


def host(adapter: Adapter, value: Any) -> np.ndarray:
    """A framework value as the protocol's NumPy array (a copy; bfloat16 -> float32)."""
    a = np.asarray(adapter.to_numpy(value))
    if a.dtype.name == "bfloat16":
        a = a.astype(np.float32)
    return np.array(a, copy=True)


def interpret(adapter: Adapter, case: Case, arrays: CaseArrays) -> Observations:
    """Run ``case.steps`` on one fresh layer built by ``adapter``'s hooks and
    return ``{(step_index, observable): numpy.ndarray}`` (module docstring).
    Whatever a hook raises propagates (the engine turns it into a verdict)."""
    cell = Cell(case, arrays)
    L = case.layer
    state_wanted = {n for n in adapter.observables
                    if (n in RUNNING and L.track_running_stats) or (n in PARAMS and L.affine)}
    obs: dict = {}
    with adapter.scope(case):
        adapter.build(cell)
        for i, step in enumerate(case.steps):
            if isinstance(step, Forward):
                obs[(i, "output")] = host(adapter, adapter.forward(cell, arrays.batches[step.batch], step.mode))
            elif isinstance(step, Backward):
                grad_input, grads = adapter.backward(cell, arrays.grad_outputs[i], case.backward_follows(i))
                obs[(i, "grad_input")] = host(adapter, grad_input)
                for name in cell.trainable:
                    if grads.get(name) is not None:
                        obs[(i, f"grad_{name}")] = host(adapter, grads[name])
            elif isinstance(step, SgdStep) and L.affine:
                adapter.sgd_step(cell, step.lr)
            for name, value in adapter.state(cell).items():
                if name in state_wanted:
                    obs[(i, name)] = host(adapter, value)
    return obs


def run_program(adapter: Adapter, case: Case, arrays: CaseArrays) -> Observations:
    """What the engine calls: the adapter's own ``run`` where it still
    overrides it (legacy), else :func:`interpret` on its hooks."""
    from .adapter import Adapter

    if type(adapter).run is not Adapter.run:
        return adapter.run(case, arrays)
    return interpret(adapter, case, arrays)


def nullscope(case: Case) -> contextlib.AbstractContextManager:
    """The default :meth:`~bnconform.adapter.Adapter.scope`: nothing to switch."""
    return contextlib.nullcontext()
