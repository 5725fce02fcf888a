"""OpenVINO (2026.4.1, CPU): an ONNX BatchNormalization-15 with training_mode=1 run on an EMPTY batch
(N = 0) returns running_mean = decay * input_mean and running_var = decay * input_var: batch statistics
of 0 are averaged in, where nothing should change (no values were seen; PyTorch skips the update, the
ONNX reference evaluator produces NaN: findings/onnx_batchnorm_empty_batch_nan.py).

Run: python findings/openvino_onnx_batchnorm_empty_batch.py — exit 1 while it reproduces.
"""

import os
import tempfile

import numpy as np
import openvino as ov
from onnx import TensorProto, helper, numpy_helper

C = 3
node = helper.make_node("BatchNormalization", ["X", "scale", "B", "mean", "var"], ["Y", "rm", "rv"],
                        epsilon=1e-5, momentum=0.9, training_mode=1)
inits = [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in
         (("scale", [1.5, 2.0, 0.5]), ("B", [0.1, 0.2, 0.3]), ("mean", [0.4, -0.5, 0.6]), ("var", [2.0, 3.0, 4.0]))]
outs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, C, None, None])] + [
    helper.make_tensor_value_info(n, TensorProto.FLOAT, [C]) for n in ("rm", "rv")]
graph = helper.make_graph([node], "bn", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, C, None, None])],
                          outs, initializer=inits)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "bn.onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    core = ov.Core()
    compiled = core.compile_model(core.read_model(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
result = compiled({0: np.zeros((0, C, 5, 5), np.float32)})
_, rm, rv = (result[o] for o in compiled.outputs)
print("running_mean", rm, "(input [0.4, -0.5, 0.6])")
print("running_var ", rv, "(input [2, 3, 4])")
shrunk = np.allclose(rm, 0.9 * np.array([0.4, -0.5, 0.6])) and np.allclose(rv, 0.9 * np.array([2.0, 3.0, 4.0]))
print(f"openvino {ov.__version__}: {'REPRODUCES (zeros averaged in)' if shrunk else 'changed'}")
raise SystemExit(1 if shrunk else 0)
