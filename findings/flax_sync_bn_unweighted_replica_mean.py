"""Flax 0.12.8 / JAX 0.10.2: synchronized flax.linen.BatchNorm(axis_name=...) with uneven
per-replica batches does not compute the statistics of the union of the replicas' values.

flax/linen/normalization.py _compute_stats (maybe_distributed_mean) takes each device's
mean over its masked values, x.mean(axes, where=mask), and then lax.pmean's the per-device
means: an UNWEIGHTED average. With R devices holding n_r valid rows (padded to one shape,
BatchNorm(mask=...): the Flax idiom for ragged batches), replica r's values weigh 1/(R n_r)
instead of 1/sum(n). A replica with no valid row (the tail of a dataset) has a 0/0 mean and
makes every statistic, output and running statistic NaN. Upstream: google/flax#2417
(closed, P3: "no way of getting different array shapes per device" - the mask is one).

Run: python findings/flax_sync_bn_unweighted_replica_mean.py   (sets 2 host devices itself)
"""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"

import flax  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

print(f"flax {flax.__version__}, jax {jax.__version__}, {len(jax.devices())} host devices")
bn = nn.BatchNorm(axis_name="r", use_fast_variance=False, momentum=0.0, epsilon=0.0)
variables = bn.init(jax.random.PRNGKey(0), jnp.zeros((3, 1)), use_running_average=True)


def run(x, mask):
    def f(v, x, m):
        y, upd = bn.apply(v, x, use_running_average=False, mutable=["batch_stats"], mask=m)
        return y, upd["batch_stats"]

    rep = jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), variables)
    return jax.pmap(f, axis_name="r")(rep, x, mask)


# Replica 0 holds [0, 1, 2], replica 1 holds [10] (two padding rows, masked out).
x = jnp.array([[[0.0], [1.0], [2.0]], [[10.0], [0.0], [0.0]]])
mask = jnp.array([[[True], [True], [True]], [[True], [False], [False]]])
_, stats = run(x, mask)
union = np.array([0.0, 1.0, 2.0, 10.0])
print(f"uneven [3, 1]: running mean {np.asarray(stats['mean'])[:, 0]} (union mean {union.mean()}, "
      f"average of replica means {(1.0 + 10.0) / 2})")
print(f"               running var  {np.asarray(stats['var'])[:, 0]} (union var {union.var():.4f})")

# Replica 1 empty: every row masked.
mask = jnp.array([[[True], [True], [True]], [[False], [False], [False]]])
y, stats = run(x, mask)
print(f"empty replica: output of replica 0 {np.asarray(y)[0, :, 0]}, running mean {np.asarray(stats['mean'])[:, 0]} "
      f"(expected: the statistics of [0, 1, 2])")
