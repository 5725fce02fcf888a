"""paddlepaddle 2.6 and 3.0: BatchNorm refuses a zero-size batch in training mode.

paddle.nn.BatchNorm1D on an input of shape (0, C) raises
ValueError: (InvalidArgument) Each dimension of input tensor is expected to be -1 or a positive
number, but received 0 (paddle/phi/infermeta/multiary.cc, BatchNormInferMeta), where an empty batch
is well defined: an empty output and unchanged running statistics (PyTorch returns early in
aten/src/ATen/native/Normalization.cpp). Found by the release sweep (issue 17): the shards
reports/sweep/paddle-2.6.2 and paddle-3.0.0 have the cell empty-batch as this exception; 3.1.1 (and
3.3.1, tox env paddle) accept the batch.

Run in an env with the release to check (e.g. `uv pip install paddlepaddle==2.6.2 "numpy<2" setuptools`):
    python findings/paddle_empty_batch_raises.py
Prints the paddle version and either the exception (affected) or the output shape and the
running statistics (fixed: unchanged, 0 and 1).
"""

import numpy as np
import paddle

paddle.set_device("cpu")
bn = paddle.nn.BatchNorm1D(3)
bn.train()
x = paddle.to_tensor(np.zeros((0, 3), dtype="float32"))
print("paddle", paddle.__version__)
try:
    y = bn(x)
except ValueError as exc:  # 2.6.x, 3.0.x
    print("AFFECTED:", str(exc).splitlines()[0][:200])
else:
    print("fixed: output shape", y.shape, "running_mean", bn._mean.numpy(), "running_var", bn._variance.numpy())
