"""onnxruntime: a BatchNormalization with training_mode=1 whose running_mean /
running_var outputs are not consumed (not graph outputs) normalises with the
RUNNING statistics (inference) once graph optimisations are on.

Measured with onnx 1.23.2, onnxruntime 1.32.0 (CPU), opset 15. The node is
valid: the BatchNormalization-15 schema requires the three outputs in training
mode (a node with only Y is refused: ShapeInferenceError), but nothing requires
a graph to consume them — an exporter's training graph whose running update is
dropped. Expected (spec, onnx/defs/nn/defs.cc, and onnxruntime itself with
ORT_DISABLE_ALL or with the outputs consumed): Y = scale * (X - batch_mean) /
sqrt(batch_var + eps) + B. Observed at ORT_ENABLE_BASIC and above: Y is the
inference formula with input_mean / input_var.

Run: python findings/onnxruntime_training_bn_unused_running_outputs.py
Exit status 1 while the defect reproduces, 0 once fixed.
"""

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

C, EPS = 3, 1e-5
rng = np.random.default_rng(0)
x = rng.normal(2.0, 3.0, size=(4, C, 5, 5)).astype(np.float32)
scale, bias = np.ones(C, np.float32), np.zeros(C, np.float32)
mean, var = np.zeros(C, np.float32), np.ones(C, np.float32)


def model(consume_running: bool):
    node = helper.make_node("BatchNormalization", ["X", "scale", "B", "mean", "var"], ["Y", "rm", "rv"],
                            epsilon=EPS, momentum=0.9, training_mode=1)
    outs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, C, None, None])]
    if consume_running:
        outs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [C]) for n in ("rm", "rv")]
    inits = [numpy_helper.from_array(a, n) for n, a in (("scale", scale), ("B", bias), ("mean", mean), ("var", var))]
    graph = helper.make_graph([node], "bn", [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                                          [None, C, None, None])], outs,
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]).SerializeToString()


bm, bv = x.mean(axis=(0, 2, 3), dtype=np.float64), x.astype(np.float64).var(axis=(0, 2, 3))
expected = (x - bm[None, :, None, None]) / np.sqrt(bv[None, :, None, None] + EPS)
inference = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + EPS)

bad = False
for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"):
    for consume in (True, False):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        y = ort.InferenceSession(model(consume), opts, providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
        err, err_inf = np.abs(y - expected).max(), np.abs(y - inference).max()
        ok = err < 1e-4
        bad |= not ok
        print(f"{level:20s} running outputs consumed={consume!s:5s}: max|Y - batch-stat Y| = {err:.3g}, "
              f"max|Y - running-stat Y| = {err_inf:.3g} -> {'ok' if ok else 'BUG: inference statistics'}")
print(f"onnxruntime {ort.__version__}: {'REPRODUCES' if bad else 'fixed'}")
raise SystemExit(1 if bad else 0)
