"""onnx 1.23.2 reference evaluator, BatchNormalization in training mode with a
float16 input: the batch variance is ``x.var(axis)`` on the float16 array, and
NumPy's ``var`` sums float16 values in float16 (its ``mean`` widens to float32,
its ``var`` does not), so once N * |mean| exceeds 65504 the sum overflows: the
variance and running_var become inf and the output collapses to 0. This is
beyond the bound of the documented known bug onnx-reference-half-stats-in-half
(half-precision rounding, not overflow).

Found by ``bnconform explore --framework onnxruntime,onnx --seed 2`` (minimal
case: 256 values per channel around 1000, one training forward).

Source: onnx/reference/ops/op_batch_normalization.py _batchnorm_training_mode
(saved_var = x.var(axis=axis)); numpy/_core/_methods.py _var (the float16
sum is not widened, unlike _mean's is_float16_result path).

Run: python findings/onnx_reference_half_var_overflow.py
"""

import numpy as np
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

x = (1000 + np.random.default_rng(0).standard_normal((256, 1))).astype(np.float16)
print("numpy: x.mean() =", x.mean(axis=0), " x.var() =", x.var(axis=0), " (float64 var:", x.astype(np.float64).var(), ")")
node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"], training_mode=1)
f16, f32 = TensorProto.FLOAT16, TensorProto.FLOAT
graph = helper.make_graph([node], "bn", [helper.make_tensor_value_info("x", f16, [256, 1])]
                          + [helper.make_tensor_value_info(n, f32, [1]) for n in "sbmv"],
                          [helper.make_tensor_value_info("y", f16, [256, 1]), helper.make_tensor_value_info("rm", f32, [1]),
                           helper.make_tensor_value_info("rv", f32, [1])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
y, rm, rv = ReferenceEvaluator(model).run(None, {"x": x, "s": one, "b": zero, "m": zero, "v": one})
print("reference evaluator: running_var =", rv, " output min/max =", y.min(), y.max(), "(expected about -3..3)")
