"""Adapters for ``paddle.nn.BatchNorm1D/2D/3D`` (PaddlePaddle, CPU, dynamic graph).

Semantics relied on (paddlepaddle 3.3.1), read in ``python/paddle/nn/layer/norm.py``
(``_BatchNormBase``) and ``python/paddle/nn/functional/norm.py`` (``batch_norm``):

* ``momentum`` (default 0.9) is the DECAY: ``moving = momentum * moving +
  (1 - momentum) * batch``, so the catalogue's new-batch weight ``m`` becomes
  ``momentum = 1 - m``; no cumulative average. ``epsilon`` default 1e-5.
* ``data_format``: "NC"/"NCL"/"NLC" (1D), "NCHW"/"NHWC" (2D),
  "NCDHW"/"NDHWC" (3D): channel first or last only.
* ``use_global_stats``: None -> by mode (``training``); False -> batch
  statistics in every mode (``trainable_statistics``); True -> global stats.
* Parameters and moving statistics are created in ``get_default_dtype()``
  (float32; float64 when the default dtype is set to float64 — the Paddle idiom
  for a double-precision layer).
* CPU kernel (``paddle/phi/kernels/cpu/batch_norm_kernel.cc``): the moving
  variance is updated with the BIASED batch variance (divisor N*H*W).

Idioms translated: ``train`` -> ``layer.train()``; ``eval`` and
``train_global_stats`` -> ``layer.eval()`` (the dynamic graph still records
gradients, as with ``torch.nn.Module.eval()``); ``track_running_stats: false``
-> ``use_global_stats=False``; ``affine: false`` -> ``weight_attr=False,
bias_attr=False``; ``layer.frozen`` -> ``ParamAttr(trainable=False)`` (sets
``stop_gradient``) and the parameter left out of ``paddle.optimizer.SGD``;
``backward`` -> ``paddle.autograd.backward`` after clearing gradients.
"""

from __future__ import annotations

import numpy as np

from bnconform.adapter import Adapter
from bnconform.catalogue import OBSERVABLES, Case

_FORMATS = {(2, 1): ("BatchNorm1D", "NC"), (3, 1): ("BatchNorm1D", "NCL"), (3, 2): ("BatchNorm1D", "NLC"),
            (4, 1): ("BatchNorm2D", "NCHW"), (4, 3): ("BatchNorm2D", "NHWC"),
            (5, 1): ("BatchNorm3D", "NCDHW"), (5, 4): ("BatchNorm3D", "NDHWC")}

def paddle_version() -> str:
    import paddle

    return paddle.__version__


class PaddleBatchNorm(Adapter):
    name = "paddle.nn.BatchNorm1D/2D/3D"
    framework = "paddle"
    observables = frozenset(OBSERVABLES) - {"num_batches_tracked"}

    def capabilities(self, case: Case) -> str | None:
        rank, axis = len(case.input.shape), case.input.axis
        if (rank, axis) not in _FORMATS:
            return (f"paddle BatchNorm data_format puts the channel first or last (NC, NCL, NLC, NCHW, NHWC, "
                    f"NCDHW, NDHWC); rank {rank} with channel_axis={case.input.channel_axis} is not expressible")
        if case.input.dtype in ("float16", "bfloat16"):
            return (f"paddle {paddle_version()} CPU registers batch_norm for float32/float64 only: "
                    f"'The kernel with key (CPU, ..., {case.input.dtype}) of kernel `batch_norm` is not registered'")
        if case.uses_cumulative_average:
            return "paddle BatchNorm takes a fixed float momentum (decay): no cumulative average (momentum=None)"
        return None

    def to_numpy(self, t) -> np.ndarray:
        a = t.detach() if hasattr(t, "detach") else t
        if "bfloat16" in str(a.dtype):
            a = a.astype("float32")
        return a.numpy()

    def build(self, cell):
        import paddle

        paddle.set_device("cpu")
        case, pdt = cell.case, cell.param_dtype
        L = case.layer
        cls, fmt = _FORMATS[(len(case.input.shape), case.input.axis)]
        attrs = {}
        for n, key in (("weight", "weight_attr"), ("bias", "bias_attr")):
            attrs[key] = False if not L.affine else paddle.ParamAttr(trainable=n not in cell.frozen)
        previous = paddle.get_default_dtype()
        paddle.set_default_dtype(pdt)
        try:
            layer = getattr(paddle.nn, cls)(
                L.num_features, momentum=L.decay, epsilon=L.eps,
                data_format=fmt, use_global_stats=None if L.track_running_stats else False, **attrs)
        finally:
            paddle.set_default_dtype(previous)
        layer._mean.set_value(cell.init("running_mean"))
        layer._variance.set_value(cell.init("running_var"))
        if L.affine:
            layer.weight.set_value(cell.init("weight"))
            layer.bias.set_value(cell.init("bias"))
        cell.layer, cell.optimized = layer, [p for p in layer.parameters() if not p.stop_gradient]

    def forward(self, cell, x, mode):
        import paddle

        cell.layer.train() if mode == "train" else cell.layer.eval()
        cell.x = paddle.to_tensor(np.ascontiguousarray(x), dtype=cell.dtype, stop_gradient=False)
        cell.y = cell.layer(cell.x)
        return cell.y

    def backward(self, cell, grad_output, retain):
        import paddle

        cell.x.clear_gradient()
        cell.layer.clear_gradients()
        g = paddle.to_tensor(np.ascontiguousarray(grad_output), dtype=cell.dtype)
        paddle.autograd.backward([cell.y], [g], retain_graph=retain)
        return cell.x.grad, {n: getattr(cell.layer, n).grad for n in cell.trainable}

    def sgd_step(self, cell, lr):
        import paddle

        if cell.optimized:
            paddle.optimizer.SGD(learning_rate=lr, parameters=cell.optimized).step()

    def state(self, cell):
        return {"running_mean": cell.layer._mean, "running_var": cell.layer._variance,
                **({"weight": cell.layer.weight, "bias": cell.layer.bias} if cell.case.layer.affine else {})}
