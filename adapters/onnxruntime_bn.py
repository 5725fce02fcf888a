"""Adapters for the ONNX ``BatchNormalization`` operator, opset 15, run by
ONNX Runtime (``onnxruntime``) and by the ONNX reference evaluator
(``onnx.reference.ReferenceEvaluator``, a NumPy cross-check of the spec).

Semantics relied on (onnx 1.23.2, onnxruntime 1.32.0), from the operator
schema (``onnx/defs/nn/defs.cc``, BatchNormalization-15; printed by
``onnx.defs.get_schema("BatchNormalization", 15).doc``):

* inputs ``X`` (N x C x D1 ... Dn: the channel is dim 1), ``scale``, ``B``,
  ``input_mean``, ``input_var``; attributes ``epsilon`` (default 1e-5),
  ``momentum`` (default 0.9) and ``training_mode`` (default 0); ``epsilon`` and
  ``momentum`` are FLOAT attributes (stored as float32).
* ``training_mode=1``: ``Y`` uses the batch mean and the POPULATION (biased)
  variance ``ReduceVar = sum((x - mean)^2) / N`` and the op returns
  ``running_mean = input_mean * momentum + current_mean * (1 - momentum)``, the
  same for ``running_var`` with the biased ``current_var``: ``momentum`` is the
  DECAY, i.e. ``1 - m`` for the catalogue's new-batch weight ``m``; the running
  variance is biased (paper Alg. 2 uses the unbiased one).
* ``training_mode=0``: ``Y = (X - input_mean) / sqrt(input_var + epsilon) *
  scale + B``.
* The reference implementation (``onnx/reference/ops/op_batch_normalization.py``,
  ``_batchnorm_training_mode``) uses ``x.var`` (ddof=0) likewise.

Idioms translated: the layer state (running statistics, gamma, beta) is what a
deployed ONNX model carries as tensors; here they are graph inputs fed at each
run, and the running statistics a ``training_mode=1`` run returns become the
state for the next step (what an ONNX training loop does). ``eval`` and a
forward-only ``train_global_stats`` -> ``training_mode=0``;
``track_running_stats: false`` -> ``training_mode=1`` in every mode with the
running outputs discarded; ``affine: false`` -> ``scale = 1``, ``B = 0``
(what ``torch.onnx`` exports).

The op is forward-only: no gradient or optimizer exists in ONNX Runtime's
inference package (training lives in the separate onnxruntime-training /
ORTModule), so cases with ``backward``/``sgd_step`` are unsupported.
"""

from __future__ import annotations

import numpy as np

from bnconform.adapter import Adapter
from bnconform.catalogue import Backward, Case, SgdStep
from bnconform.drive import uses_batch_stats

OPSET = 15
IR_VERSION = 8  # the IR version of opset 15 (onnx 1.10); every onnxruntime >= 1.10 loads it
_ONNX_DTYPE = {"float64": "DOUBLE", "float32": "FLOAT", "float16": "FLOAT16", "bfloat16": "BFLOAT16"}

class _OnnxBatchNorm(Adapter):
    """Shared translation: one BatchNormalization node per (mode, dtype) graph."""

    observables = frozenset({"output", "running_mean", "running_var"})
    #: input dtypes the runtime executes (others -> unsupported)
    dtypes: tuple[str, ...] = ("float32", "float64", "float16")
    bfloat16_reason = ""

    def capabilities(self, case: Case) -> str | None:
        if any(isinstance(s, (Backward, SgdStep)) for s in case.steps):
            return (f"{self.name} is forward-only: BatchNormalization has no gradient or optimizer in the ONNX "
                    "inference runtime (training needs onnxruntime-training / ORTModule, a different program)")
        if case.input.axis != 1:
            return ("ONNX BatchNormalization takes X as (N x C x D1 ... Dn), channel at dim 1; "
                    f"channel_axis={case.input.channel_axis} needs a Transpose, a different graph")
        if case.input.dtype not in self.dtypes:
            return self.bfloat16_reason
        if case.uses_cumulative_average:
            return ("ONNX BatchNormalization takes a fixed float 'momentum' attribute: no cumulative "
                    "average (momentum=None)")
        return None

    # -- graph construction (translation only) --------------------------------
    def model(self, training: bool, case: Case, dtype: str, pdtype: str):
        from onnx import TensorProto, helper

        L = case.layer
        t = getattr(TensorProto, _ONNX_DTYPE[dtype])
        tp = getattr(TensorProto, _ONNX_DTYPE[pdtype])
        ndim = len(case.input.shape)
        xshape = [None] * ndim
        xshape[1] = L.num_features
        inputs = [helper.make_tensor_value_info("X", t, xshape)] + [
            helper.make_tensor_value_info(n, tp, [L.num_features]) for n in ("scale", "B", "mean", "var")]
        outputs = [helper.make_tensor_value_info("Y", t, xshape)]
        node_out = ["Y"]
        if training:  # training_mode=1 requires all three outputs (schema shape inference)
            node_out += ["running_mean", "running_var"]
            outputs += [helper.make_tensor_value_info(n, tp, [L.num_features]) for n in node_out[1:]]
        attrs = dict(epsilon=L.eps, training_mode=int(training))
        if training:
            attrs["momentum"] = L.decay  # decay = 1 - m
        node = helper.make_node("BatchNormalization", ["X", "scale", "B", "mean", "var"], node_out, **attrs)
        graph = helper.make_graph([node], "bn", inputs, outputs)
        # IR version 8, the one opset 15 came with: make_model would stamp the installed onnx's newest IR
        # version, which an older onnxruntime refuses to load ("Unsupported model IR version"; e.g. onnx
        # 1.16's IR 10 in onnxruntime 1.17) although the operator is the same -- the sweep pairs releases.
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)

    def session(self, model):  # pragma: no cover - abstract
        raise NotImplementedError

    def feed_x(self, x: np.ndarray, dtype: str) -> np.ndarray:
        return np.ascontiguousarray(x)

    @staticmethod
    def host(a) -> np.ndarray:
        """A returned running statistic as the next step's NumPy input; bfloat16
        (ml_dtypes) becomes float32 (exact)."""
        a = np.asarray(a)
        if a.dtype.name == "bfloat16":
            a = a.astype(np.float32)
        return a.copy()

    def build(self, cell):
        cell.rm, cell.rv = cell.init("running_mean"), cell.init("running_var")
        cell.scale, cell.bias = cell.init("weight"), cell.init("bias")  # 1 and 0 without affine
        cell.sessions = {}

    def forward(self, cell, x, mode):
        case = cell.case
        training = uses_batch_stats(case, mode)
        if training not in cell.sessions:
            cell.sessions[training] = self.session(self.model(training, case, cell.dtype, cell.param_dtype))
        feed = {"X": self.feed_x(x, cell.dtype), "scale": cell.scale, "B": cell.bias,
                "mean": cell.rm.copy(), "var": cell.rv.copy()}
        out = self.execute(cell.sessions[training], feed)
        if training and case.layer.track_running_stats:  # untracked: running outputs discarded
            cell.rm, cell.rv = self.host(out[1]), self.host(out[2])
        return out[0]

    def state(self, cell):
        return {"running_mean": cell.rm, "running_var": cell.rv}

    def execute(self, session, feed):  # pragma: no cover - abstract
        raise NotImplementedError


class OnnxRuntimeBatchNorm(_OnnxBatchNorm):
    """ONNX Runtime CPU execution provider (``onnxruntime/core/providers/cpu/nn/batch_norm.h``)."""

    name = "onnxruntime BatchNormalization"
    framework = "onnxruntime"
    bfloat16_reason = ("onnxruntime CPU has no BatchNormalization(15) kernel for bfloat16 "
                       "(session creation: NOT_IMPLEMENTED 'Could not find an implementation')")

    def session(self, model):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def execute(self, session, feed):
        return session.run(None, feed)


class OnnxReferenceBatchNorm(_OnnxBatchNorm):
    """The ONNX reference evaluator (``onnx/reference/ops/op_batch_normalization.py``):
    the spec written in NumPy, a cross-check of the runtime."""

    name = "onnx.reference BatchNormalization"
    framework = "onnx"
    dtypes = ("float32", "float64", "float16", "bfloat16")
    def feed_x(self, x: np.ndarray, dtype: str) -> np.ndarray:
        if dtype == "bfloat16":  # the evaluator's bfloat16 is ml_dtypes' (exact from bfloat16-valued float32)
            import ml_dtypes

            return np.ascontiguousarray(x).astype(ml_dtypes.bfloat16)
        return np.ascontiguousarray(x)

    def session(self, model):
        from onnx.reference import ReferenceEvaluator

        return ReferenceEvaluator(model)

    def execute(self, session, feed):
        return session.run(None, feed)
