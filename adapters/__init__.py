"""Built-in adapters, one small module per framework API.

``BUILTIN`` maps each adapter's report name to its ``module:Class`` target and
its group: the framework's import name, optionally with a ``.variant`` suffix
for execution paths that run as an env of their own (``torch.compile``).
``pytest --framework GROUP`` selects a group exactly. The pytest plugin instantiates them
lazily: a missing framework never breaks collection of the others, and is
reported loudly (an error when ``--framework`` demands it).

Each group is covered by one file of ``expectations/`` (its ``groups:``), which
documents the rows' quirks, known bugs and rejections (:mod:`bnconform.expect`).
"""

BUILTIN: dict[str, tuple[str, str]] = {
    "torch.nn.BatchNorm1d": ("adapters.torch_nn:BatchNorm1d", "torch"),
    "torch.nn.BatchNorm2d": ("adapters.torch_nn:BatchNorm2d", "torch"),
    "torch.nn.BatchNorm3d": ("adapters.torch_nn:BatchNorm3d", "torch"),
    "torch.nn.BatchNorm2d[channels_last]": ("adapters.torch_nn:BatchNorm2dChannelsLast", "torch"),
    "torch.nn.functional.batch_norm": ("adapters.torch_functional:FunctionalBatchNorm", "torch"),
    "torch.nn.LazyBatchNormNd": ("adapters.torch_entry:LazyBatchNorm", "torch"),
    "torch.func.functional_call(nn.BatchNormNd)": ("adapters.torch_entry:FunctionalCall", "torch"),
    "torch.nn.ConvNd/Linear -> BatchNormNd": ("adapters.torch_entry:ConvBatchNorm", "torch"),
    "torch.nn.utils.fusion.fuse_conv_bn_eval/fuse_linear_bn_eval": ("adapters.torch_entry:FusedConvBatchNorm", "torch"),
    "torch.jit.script(nn.BatchNormNd)": ("adapters.torch_entry:JitScript", "torch.export"),
    "torch.jit.trace(nn.BatchNormNd)": ("adapters.torch_entry:JitTrace", "torch.export"),
    "torch.export.export(nn.BatchNormNd).module()": ("adapters.torch_entry:TorchExport", "torch.export"),
    "torch.nn.BatchNormNd[cuda, cudnn]": ("adapters.torch_cuda:BatchNormCUDA", "torch.cuda"),
    "torch.nn.BatchNormNd[cuda, native]": ("adapters.torch_cuda:BatchNormCUDANative", "torch.cuda"),
    "torch.nn.BatchNorm2d[cuda, channels_last]": ("adapters.torch_cuda:BatchNorm2dCUDAChannelsLast", "torch.cuda"),
    "torch.compile(nn.BatchNormNd)": ("adapters.torch_compile:CompiledModule", "torch.compile"),
    "torch.compile(nn.BatchNormNd, fullgraph=True)": ("adapters.torch_compile:CompiledModuleFullGraph", "torch.compile"),
    "torch.compile(F.batch_norm)": ("adapters.torch_compile:CompiledFunctional", "torch.compile"),
    "torch.onnx.export(dynamo=False) -> onnxruntime": ("adapters.torch_onnx:TorchScriptExport", "torch.onnx"),
    "torch.onnx.export(dynamo=True) -> onnxruntime": ("adapters.torch_onnx:DynamoExport", "torch.onnx"),
    "flax.linen.BatchNorm": ("adapters.flax_linen:FlaxLinenBatchNorm", "flax"),
    "flax.linen.BatchNorm[use_fast_variance=False]": ("adapters.flax_linen:FlaxLinenBatchNormStableVariance", "flax"),
    "flax.nnx.BatchNorm": ("adapters.flax_nnx:FlaxNNXBatchNorm", "flax"),
    "flax.nnx.BatchNorm[use_fast_variance=False]": ("adapters.flax_nnx:FlaxNNXBatchNormStableVariance", "flax"),
    "flax.linen.BatchNorm[use_fast_variance=False, jax.jit]": ("adapters.flax_jit:FlaxLinenBatchNormStableVarianceJit", "flax"),
    "flax.linen.BatchNorm[jax.jit]": ("adapters.flax_jit:FlaxLinenBatchNormJit", "flax"),
    "onnxruntime BatchNormalization": ("adapters.onnxruntime_bn:OnnxRuntimeBatchNorm", "onnxruntime"),
    "onnxruntime BatchNormalization[initializers, ORT_DISABLE_ALL]": ("adapters.onnxruntime_graphs:ExportedDisabled", "onnxruntime"),
    "onnxruntime BatchNormalization[initializers, ORT_ENABLE_BASIC]": ("adapters.onnxruntime_graphs:ExportedBasic", "onnxruntime"),
    "onnxruntime BatchNormalization[initializers, ORT_ENABLE_EXTENDED]": ("adapters.onnxruntime_graphs:ExportedExtended", "onnxruntime"),
    "onnxruntime BatchNormalization[initializers, ORT_ENABLE_ALL]": ("adapters.onnxruntime_graphs:ExportedAll", "onnxruntime"),
    "onnxruntime BatchNormalization[initializers, training_mode=1 Y only, ORT_ENABLE_ALL]": ("adapters.onnxruntime_graphs:ExportedTrainingYOnly", "onnxruntime"),
    "onnx.reference BatchNormalization": ("adapters.onnxruntime_bn:OnnxReferenceBatchNorm", "onnx"),
    "paddle.nn.BatchNorm1D/2D/3D": ("adapters.paddle_bn:PaddleBatchNorm", "paddle"),
    "caffe BatchNorm+Scale (OpenCV dnn deploy)": ("adapters.caffe_opencv:CaffeDeployOpenCV", "cv2"),
    "mx.nd.BatchNorm[onednn]": ("adapters.mxnet_ndarray:NDArrayBatchNorm", "mxnet"),
    "mx.sym.BatchNorm[onednn]": ("adapters.mxnet_ndarray:SymbolBatchNorm", "mxnet"),
    "mx.nd.BatchNorm[fix_gamma default, onednn]": ("adapters.mxnet_ndarray:NDArrayBatchNormFixGamma", "mxnet"),
    "mxnet.gluon.nn.BatchNorm[onednn]": ("adapters.mxnet_gluon:GluonBatchNorm", "mxnet"),
    "mxnet.gluon.nn.BatchNorm[hybridized, onednn]": ("adapters.mxnet_gluon:GluonBatchNormHybrid", "mxnet"),
    "mx.nd.BatchNorm[native]": ("adapters.mxnet_ndarray:NDArrayBatchNormNative", "mxnet.native"),
    "mx.sym.BatchNorm[native]": ("adapters.mxnet_ndarray:SymbolBatchNormNative", "mxnet.native"),
    "mx.nd.BatchNorm[fix_gamma default, native]": ("adapters.mxnet_ndarray:NDArrayBatchNormFixGammaNative", "mxnet.native"),
    "mxnet.gluon.nn.BatchNorm[native]": ("adapters.mxnet_gluon:GluonBatchNormNative", "mxnet.native"),
    "mxnet.gluon.nn.BatchNorm[hybridized, native]": ("adapters.mxnet_gluon:GluonBatchNormHybridNative", "mxnet.native"),
    "keras.layers.BatchNormalization[tensorflow]": ("adapters.keras3:BatchNormalizationTF", "keras.tensorflow"),
    "keras.layers.BatchNormalization[jax]": ("adapters.keras3:BatchNormalizationJAX", "keras.jax"),
    "keras.layers.BatchNormalization[torch]": ("adapters.keras3:BatchNormalizationTorch", "keras.torch"),
    "tf_keras.layers.BatchNormalization(fused=True)": ("adapters.tf_keras:BatchNormalizationFused", "tf_keras"),
    "tf_keras.layers.BatchNormalization(fused=False)": ("adapters.tf_keras:BatchNormalizationNonFused", "tf_keras"),
    "tf.nn.moments+tf.nn.batch_normalization": ("adapters.tf_nn:MomentsBatchNormalization", "tensorflow"),
    "tf.compat.v1.nn.fused_batch_norm": ("adapters.tf_nn:FusedBatchNorm", "tensorflow"),
    "keras.layers.BatchNormalization[tensorflow, tf.function]": ("adapters.tf_compiled:BatchNormalizationTFFunction", "keras.tensorflow"),
    "keras.layers.BatchNormalization[tensorflow, tf.function(jit_compile=True)]": ("adapters.tf_compiled:BatchNormalizationTFXLA", "keras.tensorflow"),
    "keras.layers.BatchNormalization[tensorflow, synchronized=True]": ("adapters.tf_compiled:BatchNormalizationTFSynchronized", "keras.tensorflow"),
    "tf.nn.moments+tf.nn.batch_normalization[tf.function]": ("adapters.tf_compiled:MomentsTFFunction", "tensorflow"),
    "tf.nn.moments+tf.nn.batch_normalization[tf.function(jit_compile=True)]": ("adapters.tf_compiled:MomentsTFXLA", "tensorflow"),
}
