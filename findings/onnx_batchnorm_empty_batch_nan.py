"""onnxruntime 1.32.0 and the onnx 1.23.2 reference evaluator: BatchNormalization-15
with training_mode=1 on an EMPTY batch (N = 0) returns NaN running_mean and
running_var: the empty batch's mean/variance (0/0) is averaged into the
running statistics, destroying them. An empty batch carries no statistics; PyTorch
(aten/src/ATen/native/Normalization.cpp) leaves them unchanged, and the NumPy
computation below does the same. The ONNX schema (onnx/defs/nn/defs.cc) gives
only the update formula and does not define the empty case.

Run: python findings/onnx_batchnorm_empty_batch_nan.py
"""

import warnings

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

warnings.simplefilter("ignore", RuntimeWarning)  # NumPy: mean of an empty slice
C = 3
node = helper.make_node("BatchNormalization", ["X", "s", "b", "m", "v"], ["Y", "rm", "rv"],
                        training_mode=1, momentum=0.9, epsilon=1e-5)
graph = helper.make_graph(
    [node], "bn",
    [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, C])]
    + [helper.make_tensor_value_info(n, TensorProto.FLOAT, [C]) for n in "sbmv"],
    [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, C])]
    + [helper.make_tensor_value_info(n, TensorProto.FLOAT, [C]) for n in ("rm", "rv")])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
rm0, rv0 = np.array([0.5, -1.0, 2.0], np.float32), np.array([4.0, 0.25, 1.0], np.float32)
feed = {"X": np.zeros((0, C), np.float32), "s": np.ones(C, np.float32), "b": np.zeros(C, np.float32),
        "m": rm0, "v": rv0}

print(f"{'expected (nothing to average)':32} running_mean {rm0}  running_var {rv0}")
for name, run in (("onnx.reference", lambda: ReferenceEvaluator(model).run(None, feed)),
                  ("onnxruntime", lambda: ort.InferenceSession(model.SerializeToString(),
                                                              providers=["CPUExecutionProvider"]).run(None, feed))):
    y, rm, rv = run()
    print(f"{name:32} running_mean {rm}  running_var {rv}  (Y shape {y.shape})")
