"""More PaddlePaddle entry points to BatchNorm (issue 20), paddlepaddle 3.3.1 CPU.

``paddle.nn.functional.batch_norm(x, running_mean, running_var, weight, bias,
training, momentum, epsilon, data_format, use_global_stats)``
(``python/paddle/nn/functional/norm.py``): ``momentum`` is the decay
``1 - m``; the running statistics are the caller's tensors, updated in place
by the kernel when batch statistics are used. ``use_global_stats`` decides
the statistics (``None``: by ``training``; ``True``: the running statistics in
every mode, with the affine-only gradient; ``False``: the batch statistics in
every mode, updating the running statistics even with ``training=False``,
``paddle/phi/kernels/cpu/batch_norm_kernel.cc``). One row per
``use_global_stats`` value; within a row the catalogue's mode chooses
``training``:

================================  =============  ==================  ===================
catalogue mode                    ``None``       ``True``            ``False``
================================  =============  ==================  ===================
train                             training=True  (not expressible)   training=True
eval                              training=False training=False      (untracked only) training=False
train_global_stats                training=False training=True       (not expressible)
untracked (any mode)              training=True  (not expressible)   training = (mode == train)
================================  =============  ==================  ===================

so the six (training, use_global_stats) combinations each run. Without
tracked statistics the functional still needs running tensors: fresh
``0``/``1`` tensors per call, discarded (what ``nn.BatchNorm`` with
``use_global_stats=False`` keeps and ignores).

``paddle.jit.to_static(paddle.nn.BatchNormND)``: the layer of
:class:`adapters.paddle_bn.PaddleBatchNorm` converted to a static program
(``python/paddle/jit/api.py``; one program per ``training`` flag), run in the
dynamic graph with gradients.

Other idioms as in :mod:`adapters.paddle_bn` (data formats, float32/float64
only on CPU, ``paddle.optimizer.SGD``, frozen = ``stop_gradient``).
"""

from __future__ import annotations

import numpy as np

from bnconform.catalogue import OBSERVABLES, Case, Forward

from .paddle_bn import _FORMATS, PaddleBatchNorm, paddle_version


class _Functional(PaddleBatchNorm):
    observables = frozenset(OBSERVABLES) - {"num_batches_tracked"}
    #: the row's use_global_stats
    global_stats: bool | None = None

    def flags(self, case: Case, mode: str) -> tuple[bool, bool | None] | None:
        """``(training, use_global_stats)`` for a forward in ``mode``, None when not expressible."""
        tracked = case.layer.track_running_stats
        if self.global_stats is None:
            return (mode == "train" or not tracked), None
        if self.global_stats:
            if not tracked or mode == "train":
                return None
            return mode == "train_global_stats", True
        if tracked and mode != "train":
            return None
        return mode == "train", False

    def capabilities(self, case: Case) -> str | None:
        reason = super().capabilities(case)
        if reason:
            return reason
        for step in case.steps:
            if isinstance(step, Forward) and self.flags(case, step.mode) is None:
                what = ("the running statistics in every mode" if self.global_stats
                        else "the batch statistics (and updates the running ones) in every mode")
                kind = "tracked" if case.layer.track_running_stats else "untracked"
                return (f"use_global_stats={self.global_stats} normalises with {what}: a {step.mode} forward of "
                        f"a {kind} layer is not expressible with it")
        return None

    def build(self, cell):
        import paddle

        paddle.set_device("cpu")
        L = cell.case.layer
        tensor = lambda a, grad=False: paddle.to_tensor(np.ascontiguousarray(a), dtype=cell.param_dtype,  # noqa: E731
                                                        stop_gradient=not grad)
        cell.running = {n: tensor(cell.init(n)) for n in ("running_mean", "running_var") if L.track_running_stats}
        cell.params = {n: tensor(cell.init(n), n in cell.trainable) for n in ("weight", "bias") if L.affine}
        cell.fmt = _FORMATS[(len(cell.case.input.shape), cell.case.input.axis)][1]

    def forward(self, cell, x, mode):
        import paddle
        import paddle.nn.functional as F

        L = cell.case.layer
        training, ugs = self.flags(cell.case, mode)
        if L.track_running_stats:
            rm, rv = cell.running["running_mean"], cell.running["running_var"]
        else:
            rm = paddle.zeros([L.num_features], dtype=cell.param_dtype)
            rv = paddle.ones([L.num_features], dtype=cell.param_dtype)
        cell.x = paddle.to_tensor(np.ascontiguousarray(x), dtype=cell.dtype, stop_gradient=False)
        cell.y = F.batch_norm(cell.x, rm, rv, cell.params.get("weight"), cell.params.get("bias"),
                              training=training, momentum=L.decay,
                              epsilon=L.eps, data_format=cell.fmt, use_global_stats=ugs)
        return cell.y

    def backward(self, cell, grad_output, retain):
        import paddle

        cell.x.clear_gradient()
        for p in cell.params.values():
            p.clear_gradient()
        g = paddle.to_tensor(np.ascontiguousarray(grad_output), dtype=cell.dtype)
        paddle.autograd.backward([cell.y], [g], retain_graph=retain)
        return cell.x.grad, {n: cell.params[n].grad for n in cell.trainable}

    def sgd_step(self, cell, lr):
        import paddle

        if not cell.trainable:
            return
        lr = paddle.to_tensor(lr, dtype=cell.param_dtype)
        with paddle.no_grad():
            for n in cell.trainable:  # plain SGD on the caller's leaf tensors; no gradient, no update
                if cell.params[n].grad is not None:  # (as paddle.optimizer.SGD skips them)
                    cell.params[n].set_value(cell.params[n] - lr * cell.params[n].grad)

    def state(self, cell):
        return {**cell.running, **cell.params}


class FunctionalByMode(_Functional):
    name, global_stats = "paddle.nn.functional.batch_norm[use_global_stats=None]", None


class FunctionalGlobalStats(_Functional):
    name, global_stats = "paddle.nn.functional.batch_norm[use_global_stats=True]", True


class FunctionalBatchStats(_Functional):
    name, global_stats = "paddle.nn.functional.batch_norm[use_global_stats=False]", False


class ToStatic(PaddleBatchNorm):
    name = "paddle.jit.to_static(paddle.nn.BatchNorm1D/2D/3D)"
    #: The oldest release this row runs on. paddle 2.6 converts to the legacy static-graph Program, whose
    #: batch_norm / batch_norm_grad ops refuse what the 3.x PIR programs run (release sweep shard
    #: paddle-2.6.2: 6 of its cells raised, four mechanisms quoted in the reason below).
    since = "3.0.0"

    def capabilities(self, case: Case) -> str | None:
        from packaging.version import Version

        from bnconform.catalogue import Backward

        reason = super().capabilities(case)
        if reason:
            return reason
        if Version(paddle_version()) < Version(self.since):
            return (f"{self.name} runs from paddle {self.since} (this env: {paddle_version()}): before 3.0 "
                    "to_static builds a legacy static-graph Program whose batch_norm ops refuse affine=False "
                    "backwards ('No Input(Scale) found for BatchNormGrad'), one frozen parameter ('Output(Scale@GRAD) "
                    "and Output(Bias@GRAD) must be null or not be null at same time'), eps > 1e-3 ('epsilon' should "
                    "be less or equal than 0.001) and untracked eval ('Required tensor shall not be nullptr')")
        last = None
        for i, step in enumerate(case.steps):
            if isinstance(step, Forward):
                last = step.mode
            elif isinstance(step, Backward):
                if last != "train":
                    return ("paddle.jit.to_static runs an eval() layer with its inference program, which has no "
                            "backward (measured: the input's gradient is None after backward)")
                if case.backward_follows(i):
                    return ("paddle.jit.to_static frees the program's intermediates after the first backward: a "
                            "second backward through the same forward (retain_graph=True) fails (measured: "
                            "PreconditionNotMetError 'Tensor holds no memory')")
        return None

    def build(self, cell):
        import paddle

        super().build(cell)
        cell.layer = paddle.jit.to_static(cell.layer, full_graph=True)
