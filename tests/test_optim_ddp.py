"""Two gloo processes: the DDP step equals the per-rank computation by hand, with one all-reduce per step."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_optim import LR, batch, closure_for, flat_norm, loss_of, mlp
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.func import grad
from torch.nn.parallel import DistributedDataParallel as DDP

from gnp.optim import GNP

WORLD, ALPHA, R = 2, 0.3, 0.05
pytestmark = pytest.mark.ddp


def counting_allreduce(counter, bucket):
    counter["allreduces"] += 1
    return default_hooks.allreduce_hook(None, bucket)


def worker(rank, init_file, out_file, variant, sync):
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    model = DDP(mlp())
    counter = {"allreduces": 0}
    model.register_comm_hook(counter, counting_allreduce)
    alpha = 0.0 if variant == "standard" else ALPHA
    opt = GNP(model.parameters(), alpha=alpha, r=R, variant=variant, lr=LR, model=model, sync_perturbation=sync)
    opt.step(closure_for(model, *batch(seed=100 + rank)))
    if rank == 0:
        torch.save({"params": [p.detach() for p in model.module.parameters()], **counter}, out_file)
    dist.barrier()
    dist.destroy_process_group()


def run_ddp(tmp_path, variant, sync=False):
    out = tmp_path / f"{variant}-{sync}.pt"
    mp.spawn(worker, args=(str(tmp_path / f"init-{variant}-{sync}"), str(out), variant, sync), nprocs=WORLD)
    return torch.load(out, weights_only=True)


def by_hand(sync):
    """mean over ranks of (1−α)·g1_k + α·g2_k, g2_k at θ + r·g1/‖g1‖ with g1 per rank (or averaged)."""
    model = mlp()
    theta = {k: v.detach() for k, v in model.named_parameters()}
    losses = [loss_of(model, *batch(seed=100 + k)) for k in range(WORLD)]
    g1s = [grad(f)(theta) for f in losses]
    if sync:
        mean = {k: sum(g[k] for g in g1s) / WORLD for k in theta}
        g1s = [mean] * WORLD
    g = {k: 0 for k in theta}
    for f, g1 in zip(losses, g1s, strict=True):
        g2 = grad(f)({k: theta[k] + R * g1[k] / flat_norm(g1) for k in theta})
        for k in theta:
            g[k] = g[k] + ((1 - ALPHA) * g1[k] + ALPHA * g2[k]) / WORLD
    return [theta[k] - LR * g[k] for k in theta]


@pytest.mark.parametrize("sync", [False, True])
def test_ddp_step_equals_the_computation_by_hand(tmp_path, sync):
    result = run_ddp(tmp_path, "gnp", sync)
    for ours, expected in zip(result["params"], by_hand(sync), strict=True):
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)


def test_gnp_step_does_one_allreduce_like_standard_training(tmp_path):
    standard, gnp = run_ddp(tmp_path, "standard"), run_ddp(tmp_path, "gnp")
    assert standard["allreduces"] == 1  # this small model fits one DDP bucket
    assert gnp["allreduces"] == standard["allreduces"]
