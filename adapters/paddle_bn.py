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
from bnconform.catalogue import OBSERVABLES, Backward, Case, Forward, SgdStep

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

    @staticmethod
    def numpy(t) -> np.ndarray:
        a = t.detach() if hasattr(t, "detach") else t
        if "bfloat16" in str(a.dtype):
            a = a.astype("float32")
        return np.array(a.numpy(), copy=True)

    def run(self, case, arrays):
        import paddle

        paddle.set_device("cpu")
        L, dt, pdt = case.layer, case.input.dtype, arrays.param_dtype
        cls, fmt = _FORMATS[(len(case.input.shape), case.input.axis)]
        attrs = {}
        for n, key in (("weight", "weight_attr"), ("bias", "bias_attr")):
            attrs[key] = False if not L.affine else paddle.ParamAttr(trainable=not self.frozen(case, n))
        previous = paddle.get_default_dtype()
        paddle.set_default_dtype(pdt)
        try:
            layer = getattr(paddle.nn, cls)(
                L.num_features, momentum=1.0 - (L.momentum if L.momentum is not None else 0.1), epsilon=L.eps,
                data_format=fmt, use_global_stats=None if L.track_running_stats else False, **attrs)
        finally:
            paddle.set_default_dtype(previous)
        layer._mean.set_value(np.asarray(arrays.init["running_mean"], dtype=pdt))
        layer._variance.set_value(np.asarray(arrays.init["running_var"], dtype=pdt))
        if L.affine:
            layer.weight.set_value(np.asarray(arrays.init["weight"], dtype=pdt))
            layer.bias.set_value(np.asarray(arrays.init["bias"], dtype=pdt))
        trainable = [p for p in layer.parameters() if not p.stop_gradient]
        obs, x, y = {}, None, None
        for i, step in enumerate(case.steps):
            if isinstance(step, Forward):
                layer.train() if step.mode == "train" else layer.eval()
                x = paddle.to_tensor(np.ascontiguousarray(arrays.batches[step.batch]), dtype=dt, stop_gradient=False)
                y = layer(x)
                obs[(i, "output")] = self.numpy(y)
            elif isinstance(step, Backward):
                x.clear_gradient()
                layer.clear_gradients()
                g = paddle.to_tensor(np.ascontiguousarray(arrays.grad_outputs[i]), dtype=dt)
                paddle.autograd.backward([y], [g], retain_graph=case.backward_follows(i))
                obs[(i, "grad_input")] = self.numpy(x.grad)
                for n in ("weight", "bias"):
                    p = getattr(layer, n, None)
                    if L.affine and p is not None and p.grad is not None and not self.frozen(case, n):
                        obs[(i, f"grad_{n}")] = self.numpy(p.grad)
            elif isinstance(step, SgdStep) and trainable:
                paddle.optimizer.SGD(learning_rate=step.lr, parameters=trainable).step()
            if L.track_running_stats:
                obs[(i, "running_mean")] = self.numpy(layer._mean)
                obs[(i, "running_var")] = self.numpy(layer._variance)
            if L.affine:
                obs[(i, "weight")] = self.numpy(layer.weight)
                obs[(i, "bias")] = self.numpy(layer.bias)
        return obs
