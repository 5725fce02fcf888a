"""torch 2.13.0 CPU: what torch.nn.SyncBatchNorm does on the CPU, with and without a process group.

torch/nn/modules/batchnorm.py SyncBatchNorm.forward synchronizes only when
``torch.distributed.is_initialized()`` (need_sync); then it demands a
CUDA/HPU/XPU/PrivateUse1 tensor before any communication:

1. no process group: it falls back to F.batch_norm: plain, LOCAL BatchNorm
   (each process normalises with its own batch statistics: nothing is synchronized);
2. a gloo process group of 2 CPU processes, training mode: ValueError
   "SyncBatchNorm expected input tensor to be on GPU or XPU or privateuseone"
   (on every rank, before any all-gather);
3. the same group in eval mode: runs (need_sync is False in inference: running statistics).

So synchronized BatchNorm over replicas cannot run on CPU with torch: the suite's
replica cases are unsupported for torch (adapters/torch_sync.py reports this
measured reason). Its synchronized path needs a GPU per rank (NCCL).

Run: python findings/torch_syncbatchnorm_cpu.py
"""

import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def rank_main(rank: int, world: int, init_file: str, queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(rank)
    bn = torch.nn.SyncBatchNorm(3)
    x = torch.randn(4, 3, 2, 2) + rank
    try:
        bn(x)
        queue.put((rank, "train", "ran"))
    except Exception as exc:  # noqa: BLE001 - the measurement
        queue.put((rank, "train", f"{type(exc).__name__}: {exc}"))
    bn.eval()
    try:
        bn(x)
        queue.put((rank, "eval", "ran (running statistics, no synchronization)"))
    except Exception as exc:  # noqa: BLE001
        queue.put((rank, "eval", f"{type(exc).__name__}: {exc}"))
    dist.destroy_process_group()


def main() -> None:
    print(f"torch {torch.__version__}, distributed available: {dist.is_available()}, host {socket.gethostname()}")
    # 1. no process group
    torch.manual_seed(0)
    x = torch.randn(8, 3, 2, 2)
    sync, plain = torch.nn.SyncBatchNorm(3), torch.nn.BatchNorm2d(3)
    same = torch.equal(sync(x), plain(x)) and torch.equal(sync.running_var, plain.running_var)
    print(f"1. no process group: SyncBatchNorm == BatchNorm2d on the local batch (bitwise): {same}")
    # 2./3. a 2-process gloo group
    world = 2
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = [ctx.Process(target=rank_main, args=(r, world, os.path.join(tmp, "init"), queue)) for r in range(world)]
        for p in procs:
            p.start()
        results = sorted(queue.get(timeout=120) for _ in range(2 * world))
        for p in procs:
            p.join(timeout=60)
    for rank, mode, what in results:
        print(f"2. gloo, {world} CPU processes, rank {rank}, {mode}: {what}")


if __name__ == "__main__":
    main()
