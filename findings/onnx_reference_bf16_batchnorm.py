"""onnx reference evaluator, BatchNormalization-15, bfloat16 X (ml_dtypes), training_mode=1:
_batchnorm_training_mode computes saved_mean = x.mean(axis) and saved_var = x.var(axis) on the
bfloat16 array; NumPy widens only float16 reductions (numpy/_core/_methods.py is_float16_result),
so an ml_dtypes bfloat16 sum rounds every partial sum to bfloat16 (and stagnates once the partial
sum's half-ulp exceeds |x|). Y is normalised with those statistics and running_mean/running_var
are returned rounded to bfloat16 (declared float32). The schema says the statistics are float.

Run: python findings/onnx_reference_bf16_batchnorm.py
"""

import ml_dtypes
import numpy as np
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

node = helper.make_node("BatchNormalization", ["X", "s", "b", "m", "v"], ["Y", "rm", "rv"], training_mode=1,
                        momentum=0.9, epsilon=1e-5)
graph = helper.make_graph(
    [node], "bn", [helper.make_tensor_value_info("X", TensorProto.BFLOAT16, [None, 1])]
    + [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "sbmv"],
    [helper.make_tensor_value_info("Y", TensorProto.BFLOAT16, [None, 1])]
    + [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("rm", "rv")])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
for m in (16, 1024):
    x = (10 + np.random.default_rng(0).standard_normal((m, 1))).astype(ml_dtypes.bfloat16)
    x64 = x.astype(np.float64)
    y, rm, rv = ReferenceEvaluator(model).run(None, {"X": x, "s": np.ones(1, np.float32), "b": np.zeros(1, np.float32),
                                                     "m": np.zeros(1, np.float32), "v": np.ones(1, np.float32)})
    y64 = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5)
    print(f"m={m}: running_mean {rm} ({rm.dtype}) expected {0.1 * x64.mean():.6g}; running_var {rv} expected "
          f"{0.9 + 0.1 * x64.var():.6g}; max |Y - Y_float64| {np.abs(y.astype(np.float64) - y64).max():.3g}")
