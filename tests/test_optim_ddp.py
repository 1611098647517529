"""Two gloo processes: DDP steps equal the per-rank computation by hand, with one all-reduce per step."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from test_optim import (  # noqa: F401
    LR,
    ZEROING,
    batch,
    bn_model,
    closure_for,
    flat_norm,
    float64,
    loss_of,
    mlp,
    zeroing_closure,
)
from torch.func import functional_call, grad

from gnp.loop import averaged_buffers, close_distributed, data_parallel
from gnp.optim import GNP, ClosureZeroedGradients

WORLD, ALPHA, R, STEPS, L2, MOMENTUM = 2, 0.3, 0.05, 3, 1e-2, 0.9
pytestmark = [pytest.mark.ddp, pytest.mark.usefixtures("float64")]


def worker(rank, init_file, out_file, variant, sync, build, steps, kw):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_default_dtype(torch.float64)  # the model and its data in float64...
    model = data_parallel({"mlp": mlp, "bn": bn_model}[build](), torch.device("cpu"))  # as gnp.loop wraps it
    batches = [batch(seed=100 + 10 * step + rank) for step in range(steps)]
    torch.set_default_dtype(torch.float32)  # ...and the default left at float32, where a float32 scalar leaks
    alpha = 0.0 if variant == "standard" else ALPHA
    zero = ZEROING.get(kw.pop("zero", None))
    opt = GNP(model, alpha=alpha, r=R, variant=variant, lr=LR, sync_perturbation=sync, **kw)
    refused = None
    for x, y in batches:
        try:
            opt.step(zeroing_closure(zero, opt, model, x, y) if zero else closure_for(model, x, y))
        except ClosureZeroedGradients as err:
            refused = str(err)
            break
    torch.save({"params": [p.detach() for p in model.module.parameters()],
                "buffers": {k: b.detach() for k, b in model.module.named_buffers()},
                "evaluated": averaged_buffers(model.module, WORLD), "allreduces": opt.all_reduces,
                "refused": refused}, f"{out_file}.{rank}")
    dist.barrier()
    del model, opt  # DDP holds the group: freed first, then the group ends (gnp.loop.close_distributed)
    close_distributed()


def run_ddp(tmp_path, variant, sync=False, build="mlp", steps=1, **kw):
    """Rank 0's results, with every rank's own buffers under "rank_buffers" and its refusal under "refused"."""
    out = tmp_path / f"{variant}-{sync}-{build}.pt"
    init = str(tmp_path / f"init-{variant}-{sync}-{build}")
    mp.spawn(worker, args=(init, str(out), variant, sync, build, steps, kw), nprocs=WORLD)
    ranks = [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(WORLD)]
    return {**ranks[0], "rank_buffers": [r["buffers"] for r in ranks], "refused": [r["refused"] for r in ranks]}


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


@pytest.mark.parametrize("how", ["model.zero_grad()", "optimizer.zero_grad(set_to_none=False)"])
def test_under_ddp_a_closure_that_zeroes_the_gradients_is_refused_on_every_rank(tmp_path, how):
    ours = run_ddp(tmp_path, "gnp", zero=how)
    assert all("remove that call" in (refused or "") for refused in ours["refused"])
    for got, expected in zip(ours["params"], mlp().parameters(), strict=True):
        assert torch.equal(got, expected.detach())  # still θ: no step was taken


def test_gnp_step_does_one_allreduce_like_standard_training(tmp_path):
    standard, gnp = run_ddp(tmp_path, "standard", steps=2), run_ddp(tmp_path, "gnp", steps=2)
    assert standard["allreduces"] == 2  # this small model fits one DDP bucket: one per step
    assert gnp["allreduces"] == standard["allreduces"]


def test_several_ddp_steps_with_momentum_l2_and_batchnorm_equal_the_computation_by_hand(tmp_path):
    """Per rank: g1 and g2 with the rank's own BatchNorm batch statistics and L2; the mean over ranks into
    Nesterov SGD for 3 steps. Each rank's running statistics come from its own first passes only (not
    rank 0's broadcast), and the statistics evaluated are their mean over the ranks."""
    ours = run_ddp(tmp_path, "gnp", build="bn", steps=STEPS, weight_decay=L2, momentum=MOMENTUM, nesterov=True)
    model = bn_model()
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    start = {k: v.detach().clone() for k, v in model.named_buffers()}
    running = [dict(start) for _ in range(WORLD)]
    momentum = None
    for step in range(STEPS):
        g = {k: 0 for k in theta}
        for rank in range(WORLD):
            x, y = batch(seed=100 + 10 * step + rank)

            def f(params, x=x, y=y):
                out = functional_call(model, {**params, **{k: v.clone() for k, v in start.items()}}, (x,))
                return F.cross_entropy(out, y) + 0.5 * L2 * sum((p**2).sum() for p in params.values())

            g1 = grad(f)(theta)
            g2 = grad(f)({k: theta[k] + R * g1[k] / flat_norm(g1) for k in theta})
            for k in theta:
                g[k] = g[k] + ((1 - ALPHA) * g1[k] + ALPHA * g2[k]) / WORLD
            # this rank's running statistics: its own first pass at θ
            h = functional_call(model[0], {"weight": theta["0.weight"], "bias": theta["0.bias"]}, (x,))
            mine = running[rank]
            mine["1.running_mean"] = 0.9 * mine["1.running_mean"] + 0.1 * h.mean(0)
            mine["1.running_var"] = 0.9 * mine["1.running_var"] + 0.1 * h.var(0, unbiased=True)
            mine["1.num_batches_tracked"] = mine["1.num_batches_tracked"] + 1
        momentum = g if momentum is None else {k: MOMENTUM * momentum[k] + g[k] for k in theta}
        theta = {k: theta[k] - LR * (g[k] + MOMENTUM * momentum[k]) for k in theta}
    for got, expected in zip(ours["params"], theta.values(), strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    for rank in range(WORLD):
        for name, expected in running[rank].items():
            got = ours["rank_buffers"][rank][name]
            torch.testing.assert_close(got, expected.to(got.dtype), rtol=0, atol=1e-12)
    assert not torch.equal(running[0]["1.running_var"], running[1]["1.running_var"])
    for name in ("1.running_mean", "1.running_var"):
        mean = sum(r[name] for r in running) / WORLD
        torch.testing.assert_close(ours["evaluated"][name], mean, rtol=0, atol=1e-12)
