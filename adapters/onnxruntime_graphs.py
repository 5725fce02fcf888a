"""ONNX ``BatchNormalization`` graphs written the way exporters write them, run by
onnxruntime at each graph optimisation level (issue 20).

Differences from :mod:`adapters.onnxruntime_bn` (where the state is fed as graph
inputs and optimisations are off):

* ``scale``, ``B``, ``input_mean``, ``input_var`` (and a composite case's
  ``Conv`` / ``Gemm`` weight and bias) are INITIALIZERS, as in an exported
  file (``torch.onnx.export`` stores parameters and buffers so). With the
  default initial state several initializers hold equal values (gamma 1,
  beta 0, mean 0, var 1): what constant sharing / folding passes see.
* Inference forwards omit ``training_mode`` (default 0) and have one output.
* Training forwards set ``training_mode=1`` and, in the default rows, output
  ``running_mean`` / ``running_var`` too (the next step's initializers: the file
  is rewritten with them, as a training loop re-exports its state). The
  ``[training_mode=1, Y only]`` row keeps those node outputs but not as graph
  outputs (an exporter's graph whose running update nobody consumes), so no
  running update is observable and optimisers may prune them. A node with
  ``training_mode=1`` and ONE output is refused at session creation (measured:
  ``ShapeInferenceError: This number of op outputs should be 3 when
  Training_mode = True``), although the schema text calls them optional.
* Sessions use ``GraphOptimizationLevel`` ``ORT_DISABLE_ALL`` / ``ORT_ENABLE_BASIC``
  (constant folding, redundant-node elimination, ``ConvBNFusion`` and other
  level-1 fusions, ``onnxruntime/core/optimizer/graph_transformer_utils.cc``) /
  ``ORT_ENABLE_EXTENDED`` / ``ORT_ENABLE_ALL`` (layout transformations such as
  NCHWc), one intra-op thread.

Composite cases (``case.pre``): ``Conv(pads=(k-1)/2, strides 1)`` or
``Gemm(transB=1)`` before the BatchNormalization, as exporters write
``nn.ConvNd`` / ``nn.Linear``. Translation conventions as in
:mod:`adapters.onnxruntime_bn` (momentum attribute = decay ``1 - m``; forward
only; channel at dim 1; ``affine: false`` -> scale 1, B 0).
"""

from __future__ import annotations

import importlib

import numpy as np

from bnconform.adapter import Adapter
from bnconform.catalogue import Backward, Case, Forward, SgdStep
from bnconform.drive import uses_batch_stats

from .onnxruntime_bn import IR_VERSION, OPSET
_ONNX_DTYPE = {"float64": "DOUBLE", "float32": "FLOAT", "float16": "FLOAT16"}


class _ExportedGraph(Adapter):
    framework = "onnxruntime"
    observables = frozenset({"output", "running_mean", "running_var"})
    blocks = frozenset({"conv", "linear"})
    #: onnxruntime.GraphOptimizationLevel member name
    level = "ORT_DISABLE_ALL"
    #: whether training_mode=1 graphs output the running statistics
    running_outputs = True

    def capabilities(self, case: Case) -> str | None:
        if any(isinstance(s, (Backward, SgdStep)) for s in case.steps):
            return (f"{self.name} is forward-only: an inference session has no gradient or optimizer "
                    "(training needs onnxruntime-training / ORTModule, a different program)")
        if case.input.axis != 1:
            return ("ONNX BatchNormalization takes X as (N x C x D1 ... Dn), channel at dim 1; "
                    f"channel_axis={case.input.channel_axis} needs a Transpose, a different graph")
        if case.input.dtype not in _ONNX_DTYPE:
            return ("onnxruntime CPU has no BatchNormalization(15) kernel for bfloat16 "
                    "(session creation: NOT_IMPLEMENTED 'Could not find an implementation')")
        if case.uses_cumulative_average:
            return "ONNX BatchNormalization takes a fixed float 'momentum' attribute: no cumulative average"
        if not self.running_outputs and case.layer.track_running_stats:
            steps = [s for s in case.steps if isinstance(s, Forward)]
            if any(s.mode == "train" for s in steps[:-1]):
                return ("training_mode=1 whose running_mean/running_var are not graph outputs: the graph "
                        "returns no running update, so a forward after a training forward cannot be expressed")
        return None

    def framework_build(self) -> str | None:
        onnx = importlib.import_module("onnx")
        return f"onnx {onnx.__version__}, opset {OPSET}, {self.level}"

    def model(self, cell, training: bool):
        from onnx import TensorProto, helper, numpy_helper

        case, L = cell.case, cell.case.layer
        t = getattr(TensorProto, _ONNX_DTYPE[cell.dtype])
        tp = getattr(TensorProto, _ONNX_DTYPE[cell.param_dtype])
        xshape = [None] * len(case.input.shape)
        xshape[1] = case.input.shape[1]
        yshape = list(xshape)
        yshape[1] = L.num_features
        inits = [numpy_helper.from_array(np.ascontiguousarray(a), n) for n, a in
                 (("scale", cell.scale), ("B", cell.bias), ("mean", cell.rm), ("var", cell.rv))]
        nodes, bn_in = [], "X"
        if case.pre is not None:
            dt = np.dtype(cell.dtype)
            inits.append(numpy_helper.from_array(cell.arrays.pre["weight"].astype(dt), "W"))
            pre_in = ["X", "W"]
            if case.pre.bias:
                inits.append(numpy_helper.from_array(cell.arrays.pre["bias"].astype(dt), "Wb"))
                pre_in.append("Wb")
            if case.pre.kind == "conv":
                k = case.pre.kernel
                nodes.append(helper.make_node("Conv", pre_in, ["Z"], kernel_shape=k, strides=[1] * len(k),
                                              pads=[(kk - 1) // 2 for kk in k] * 2))
            else:
                nodes.append(helper.make_node("Gemm", pre_in, ["Z"], transB=1))
            bn_in = "Z"
        outputs = [helper.make_tensor_value_info("Y", t, yshape)]
        node_out = ["Y"]
        attrs = dict(epsilon=L.eps)
        if training:
            attrs["training_mode"] = 1
            attrs["momentum"] = L.decay  # decay = 1 - m
            node_out += ["running_mean", "running_var"]  # the schema requires all three in training mode
            if self.running_outputs:
                outputs += [helper.make_tensor_value_info(n, tp, [L.num_features]) for n in node_out[1:]]
        nodes.append(helper.make_node("BatchNormalization", [bn_in, "scale", "B", "mean", "var"], node_out,
                                      **attrs))
        graph = helper.make_graph(nodes, "exported", [helper.make_tensor_value_info("X", t, xshape)], outputs,
                                  initializer=inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)

    def build(self, cell):
        cell.rm, cell.rv = cell.init("running_mean"), cell.init("running_var")
        cell.scale, cell.bias = cell.init("weight"), cell.init("bias")

    def forward(self, cell, x, mode):
        import onnxruntime as ort

        training = uses_batch_stats(cell.case, mode)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, self.level)
        session = ort.InferenceSession(self.model(cell, training).SerializeToString(), opts,
                                       providers=["CPUExecutionProvider"])
        out = session.run(None, {"X": np.ascontiguousarray(x)})
        if training and self.running_outputs and cell.case.layer.track_running_stats:
            cell.rm, cell.rv = np.asarray(out[1]).copy(), np.asarray(out[2]).copy()
        return out[0]

    def state(self, cell):
        return {"running_mean": cell.rm, "running_var": cell.rv}


class ExportedDisabled(_ExportedGraph):
    name, level = "onnxruntime BatchNormalization[initializers, ORT_DISABLE_ALL]", "ORT_DISABLE_ALL"


class ExportedBasic(_ExportedGraph):
    name, level = "onnxruntime BatchNormalization[initializers, ORT_ENABLE_BASIC]", "ORT_ENABLE_BASIC"


class ExportedExtended(_ExportedGraph):
    name, level = "onnxruntime BatchNormalization[initializers, ORT_ENABLE_EXTENDED]", "ORT_ENABLE_EXTENDED"


class ExportedAll(_ExportedGraph):
    name, level = "onnxruntime BatchNormalization[initializers, ORT_ENABLE_ALL]", "ORT_ENABLE_ALL"


class ExportedTrainingYOnly(_ExportedGraph):
    """``training_mode=1`` with only ``Y``: the batch statistics must still normalise (nothing may fold)."""

    name = "onnxruntime BatchNormalization[initializers, training_mode=1 Y only, ORT_ENABLE_ALL]"
    level, running_outputs = "ORT_ENABLE_ALL", False
    observables = frozenset({"output"})


class OpenVINOExportedGraph(_ExportedGraph):
    """The same exported-style ONNX files (initializers; Conv/Gemm -> BN for composite cases) read by
    OpenVINO's ONNX frontend and compiled for its CPU plugin (``openvino.Core().compile_model(model,
    "CPU")``) with ``INFERENCE_PRECISION_HINT=f32`` (the CPU plugin otherwise picks bf16 on CPUs with
    bf16/AMX units: ``src/plugins/intel_cpu/src/config.cpp``). The plugin's graph optimisations fold BN
    into a preceding convolution (``src/common/transformations``: ``ConvolutionMultiplyFusion`` after
    the BN decomposition)."""

    name = "openvino CPU (ONNX BatchNormalization, initializers)"
    framework = "openvino"
    level = "openvino CPU, INFERENCE_PRECISION_HINT=f32"

    def capabilities(self, case: Case) -> str | None:
        if case.input.dtype == "float16":
            return ("OpenVINO's ONNX frontend cannot convert BatchNormalization-15 with float16 X and float32 "
                    "scale/B/mean/var (the T/T1/T2 split the schema allows; measured: OpConversionFailure "
                    "'BatchNormInference ... Input element types do not match')")
        return super().capabilities(case)

    def framework_version(self) -> str:
        from importlib.metadata import version

        return version("openvino")

    def framework_build(self) -> str | None:
        import openvino

        return f"{openvino.__version__}; onnx opset {OPSET}; INFERENCE_PRECISION_HINT=f32"

    def forward(self, cell, x, mode):
        import os
        import tempfile

        import openvino as ov

        training = uses_batch_stats(cell.case, mode)
        core = ov.Core()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            with open(path, "wb") as f:
                f.write(self.model(cell, training).SerializeToString())
            compiled = core.compile_model(core.read_model(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        result = compiled({0: np.ascontiguousarray(x)})
        out = [result[o] for o in compiled.outputs]
        if training and self.running_outputs and cell.case.layer.track_running_stats:
            cell.rm, cell.rv = np.asarray(out[1]).copy(), np.asarray(out[2]).copy()
        return out[0]
