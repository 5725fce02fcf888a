"""onnx 1.23.2 reference evaluator (onnx/reference/ops/op_batch_normalization.py):
BatchNormalization-15 with float16 X and float32 statistics (T2 = float) in
training_mode=1 computes the batch mean/variance and the running statistics in
float16 and returns running_mean / running_var as float16 — the graph declares
them float32, and the schema says "The computation of ReduceMean and ReduceVar
uses float to avoid overflow for float16 inputs". onnxruntime 1.32.0 on the
same graph returns float32 statistics and a float16-accurate Y.

Run: python findings/onnx_reference_half_batchnorm.py
Prints dtypes and errors against a float64 NumPy computation on the SAME
float16 values.
"""

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

C = 3
node = helper.make_node("BatchNormalization", ["X", "s", "b", "m", "v"], ["Y", "rm", "rv"],
                        training_mode=1, momentum=0.9, epsilon=1e-5)
graph = helper.make_graph(
    [node], "bn",
    [helper.make_tensor_value_info("X", TensorProto.FLOAT16, [4, C, 5, 5])]
    + [helper.make_tensor_value_info(n, TensorProto.FLOAT, [C]) for n in "sbmv"],
    [helper.make_tensor_value_info("Y", TensorProto.FLOAT16, [4, C, 5, 5])]
    + [helper.make_tensor_value_info(n, TensorProto.FLOAT, [C]) for n in ("rm", "rv")])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])

x = (np.random.default_rng(60).standard_normal((4, C, 5, 5)) * 2.0 + 1.0).astype(np.float16)
feed = {"X": x, "s": np.ones(C, np.float32), "b": np.zeros(C, np.float32),
        "m": np.zeros(C, np.float32), "v": np.ones(C, np.float32)}

# float64 reference on the float16 values (biased variance, decay 0.9, as the spec says)
xr = x.astype(np.float64)
mean, var = xr.mean(axis=(0, 2, 3)), xr.var(axis=(0, 2, 3))
y_ref = (xr - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
rm_ref, rv_ref = 0.1 * mean, 0.9 + 0.1 * var

for name, run in (("onnx.reference", lambda: ReferenceEvaluator(model).run(None, feed)),
                  ("onnxruntime", lambda: ort.InferenceSession(model.SerializeToString(),
                                                              providers=["CPUExecutionProvider"]).run(None, feed))):
    y, rm, rv = run()
    half_ulp = np.abs(np.spacing(y_ref.astype(np.float16))).astype(np.float64) / 2
    y_err = (np.abs(y.astype(np.float64) - y_ref) / half_ulp).max()
    print(f"{name:15} Y {y.dtype} max err {y_err:.3g} half-ulps (correct rounding: <= 1)   "
          f"running_mean {rm.dtype} err {np.abs(rm - rm_ref).max():.3g}   running_var {rv.dtype} err {np.abs(rv - rv_ref).max():.3g}")
print("declared running_mean/running_var type: float32 (T2); float32 statistics would err ~1e-7.")
