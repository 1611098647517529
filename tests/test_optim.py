"""The optimizer against exact float64 computations (torch.func) on small models."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from gnp.optim import GNP

torch.set_default_dtype(torch.float64)
LR = 0.1


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def batch(seed=1, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def closure_for(model, x, y):
    def closure(create_graph=False):
        loss = F.cross_entropy(model(x), y)
        loss.backward(create_graph=create_graph)
        return loss

    return closure


def loss_of(model, x, y, l2=0.0):
    """L(θ) + (l2/2)·‖θ‖² as a function of a dict of parameters, for torch.func."""

    def f(params):
        penalty = sum((p**2).sum() for p in params.values())
        return F.cross_entropy(functional_call(model, params, (x,)), y) + 0.5 * l2 * penalty

    return f


def flat_norm(tree):
    return torch.sqrt(sum((v**2).sum() for v in tree.values()))


def reference_gradient(model, x, y, variant, alpha, r, l2=0.0, mix="paper"):
    """g for one step of each variant, written out from the formulas."""
    f = loss_of(model, x, y, l2)
    theta = {k: v.detach() for k, v in model.named_parameters()}
    g1 = grad(f)(theta)
    n1 = flat_norm(g1)
    if variant == "db":
        penalty_grad = grad(lambda p: flat_norm(grad(f)(p)))(theta)
        return {k: g1[k] + alpha * r * penalty_grad[k] for k in theta}
    step = {"gnp": r / n1, "sam": r / n1, "fgr": r, "bgr": -r}[variant]
    g2 = grad(f)({k: theta[k] + step * g1[k] for k in theta})
    a, b = {"bgr": (1 + alpha, -alpha)}.get(variant, (1 - alpha, alpha))
    if mix == "official":
        a = (1 - alpha) / n1
    return {k: a * g1[k] + b * g2[k] for k in theta}


@pytest.mark.parametrize(
    "variant,alpha,mix",
    [("gnp", 0.3, "paper"), ("gnp", 0.8, "official"), ("sam", 1.0, "paper"), ("fgr", 0.5, "paper"),
     ("bgr", 0.5, "paper"), ("db", 0.4, "paper"), ("gnp", -0.5, "paper"), ("gnp", 1.5, "paper")],
)
@pytest.mark.parametrize("l2", [0.0, 0.01])
def test_each_variant_matches_its_formula(variant, alpha, mix, l2):
    model, (x, y), r = mlp(), batch(), 0.05
    expected = reference_gradient(model, x, y, variant, alpha, r, l2, mix)
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = GNP(model.parameters(), torch.optim.SGD, alpha=alpha, r=r, variant=variant, mix=mix,
              weight_decay=l2, lr=LR)
    opt.step(closure_for(model, x, y))
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), theta[k] - LR * expected[k], rtol=0, atol=1e-12)


def test_grad_norm_is_the_global_norm_of_g1():
    model, (x, y) = mlp(), batch()
    g1 = grad(loss_of(model, x, y))({k: v.detach() for k, v in model.named_parameters()})
    opt = GNP(model.parameters(), alpha=0.3, r=0.05, lr=LR)
    opt.step(closure_for(model, x, y))
    torch.testing.assert_close(opt.grad_norm, flat_norm(g1), rtol=0, atol=1e-12)


def run_steps(opt_factory, steps=3, seed=0):
    model = mlp(seed)
    opt = opt_factory(model)
    for i in range(steps):
        x, y = batch(seed=10 + i)
        if isinstance(opt, GNP):
            opt.step(closure_for(model, x, y))
        else:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model


def test_alpha_zero_is_the_base_optimizer_bit_for_bit_in_one_pass():
    kw = dict(lr=LR, momentum=0.9, nesterov=True, weight_decay=1e-3)
    base = run_steps(lambda m: torch.optim.SGD(m.parameters(), **kw))
    calls = []

    def counting(model):
        real_forward = model.forward
        model.forward = lambda x: (calls.append(1), real_forward(x))[1]
        return GNP(model.parameters(), torch.optim.SGD, alpha=0.0, r=0.05, **kw)

    ours = run_steps(counting)
    assert len(calls) == 3, "alpha = 0 must cost one forward pass per step"
    for p, q in zip(base.parameters(), ours.parameters(), strict=True):
        assert torch.equal(p, q)


def test_alpha_one_is_straightforward_sam():
    """SAM as in davda54/sam, written out: ascend r·g1/‖g1‖, take g2 there, step from θ."""
    kw = dict(lr=LR, momentum=0.9)
    sam_model = mlp()
    sgd = torch.optim.SGD(sam_model.parameters(), **kw)
    for i in range(3):
        x, y = batch(seed=10 + i)
        sgd.zero_grad()
        F.cross_entropy(sam_model(x), y).backward()
        norm = torch.sqrt(sum((p.grad**2).sum() for p in sam_model.parameters()))
        e = [0.05 * p.grad / norm for p in sam_model.parameters()]
        with torch.no_grad():
            for p, ei in zip(sam_model.parameters(), e, strict=True):
                p.add_(ei)
        sgd.zero_grad()
        F.cross_entropy(sam_model(x), y).backward()
        with torch.no_grad():
            for p, ei in zip(sam_model.parameters(), e, strict=True):
                p.sub_(ei)
        sgd.step()
    for variant in ("sam", "gnp"):
        ours = run_steps(lambda m, v=variant: GNP(m.parameters(), alpha=1.0, r=0.05, variant=v, **kw))
        for p, q in zip(sam_model.parameters(), ours.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-13)


def regularizer_error(variant, alpha, r):
    """Relative error of the regularization part g − g1 against its exact value."""
    model, (x, y) = mlp(), batch()
    f = loss_of(model, x, y)
    theta = {k: v.detach() for k, v in model.named_parameters()}
    g1 = grad(f)(theta)
    if variant == "gnp":  # exact: α·r·∇‖∇L‖
        exact = reference_gradient(model, x, y, "db", alpha, r)
    else:  # exact: ∇[(α·r/2)·‖∇L‖²] = α·r·H·g1
        hg = grad(lambda p: 0.5 * flat_norm(grad(f)(p)) ** 2)(theta)
        exact = {k: g1[k] + alpha * r * hg[k] for k in theta}
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    GNP(model.parameters(), alpha=alpha, r=r, variant=variant, lr=1.0).step(closure_for(model, x, y))
    ours = {k: before[k] - p.detach() for k, p in model.named_parameters()}  # g, as lr = 1
    num = flat_norm({k: (ours[k] - g1[k]) - (exact[k] - g1[k]) for k in theta})
    return (num / flat_norm({k: exact[k] - g1[k] for k in theta})).item()


@pytest.mark.parametrize("variant", ["gnp", "fgr", "bgr"])
def test_finite_differences_converge_to_the_exact_regularizer_as_r_shrinks(variant):
    errors = [regularizer_error(variant, 0.5, r) for r in (0.04, 0.02, 0.01)]
    assert errors[0] < 0.2
    for coarse, fine in zip(errors, errors[1:], strict=False):
        assert 1.6 < coarse / fine < 2.5, errors  # O(r): halving r halves the error


def test_zero_gradient_gives_no_nan_and_the_base_step():
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]

    def closure():
        loss = 0.0 * sum(p.sum() for p in model.parameters())
        loss.backward()
        return loss

    opt = GNP(model.parameters(), alpha=0.5, r=0.05, lr=LR)
    opt.step(closure)
    assert opt.grad_norm == 0
    for p, q in zip(before, model.parameters(), strict=True):
        assert torch.equal(p, q)


def bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))


def test_batchnorm_running_stats_come_from_the_first_pass_only():
    model, (x, y) = bn_model(), batch()
    first_pass_only = copy.deepcopy(model)
    first_pass_only(x)
    GNP(model.parameters(), alpha=0.5, r=0.05, lr=LR, model=model).step(closure_for(model, x, y))
    ours, ref = model[1], first_pass_only[1]
    assert torch.equal(ours.running_mean, ref.running_mean)
    assert torch.equal(ours.running_var, ref.running_var)
    assert ours.num_batches_tracked.item() == 1 and ours.track_running_stats


def test_clipping_applies_to_the_final_gradient():
    model, (x, y) = mlp(), batch()
    g = reference_gradient(model, x, y, "gnp", 0.5, 0.05)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    GNP(model.parameters(), alpha=0.5, r=0.05, lr=1.0, clip_grad_norm=1e-3).step(closure_for(model, x, y))
    moved = {k: before[k] - p.detach() for k, p in model.named_parameters()}
    torch.testing.assert_close(flat_norm(moved), torch.tensor(1e-3), rtol=1e-5, atol=0)
    cos = sum((moved[k] * g[k]).sum() for k in g) / (flat_norm(moved) * flat_norm(g))
    assert cos > 1 - 1e-9  # the direction of the final g, not of g1


@pytest.mark.parametrize("bad_pass", [1, 2])
def test_fp16_scaler_skips_the_whole_step_when_either_pass_overflows(bad_pass):
    torch.set_default_dtype(torch.float32)
    try:
        model, (x, y) = mlp(), batch()
        x = x.float()
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        opt = GNP(model.parameters(), alpha=0.5, r=0.05, lr=LR, grad_scaler=scaler)
        before = [p.detach().clone() for p in model.parameters()]
        calls, poison = [], [True]

        def closure():
            calls.append(1)
            loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            if poison[0] and len(calls) == bad_pass:
                next(model.parameters()).grad[0, 0] = float("inf")
            return loss

        opt.step(closure)
        assert len(calls) == 2
        assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))
        assert scaler.get_scale() == 512.0  # backed off, as for a skipped step
        poison[0] = False
        opt.step(closure)  # a clean step goes through
        assert not all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))
    finally:
        torch.set_default_dtype(torch.float64)


def test_fp16_scaler_step_equals_the_unscaled_step():
    torch.set_default_dtype(torch.float32)
    try:
        results = []
        for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**10)):
            model, (x, y) = mlp(), batch()
            x = x.float()
            opt = GNP(model.parameters(), alpha=0.5, r=0.05, lr=LR, weight_decay=0.01, grad_scaler=scaler)

            def closure(scaler=scaler, model=model, x=x, y=y):
                loss = F.cross_entropy(model(x), y)
                (loss if scaler is None else scaler.scale(loss)).backward()
                return loss

            opt.step(closure)
            results.append([p.detach().clone() for p in model.parameters()])
        for p, q in zip(*results, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    finally:
        torch.set_default_dtype(torch.float64)


def test_bf16_autocast_step_runs():
    torch.set_default_dtype(torch.float32)
    try:
        model, (x, y) = bn_model(), batch()
        x = x.float()
        opt = GNP(model.parameters(), alpha=0.5, r=0.05, lr=LR, model=model)

        def closure():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        before = [p.detach().clone() for p in model.parameters()]
        loss = opt.step(closure)
        assert torch.isfinite(loss) and torch.isfinite(opt.grad_norm)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert not all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))
    finally:
        torch.set_default_dtype(torch.float64)


def test_checkpoint_round_trip_continues_bit_identically():
    kw = dict(alpha=0.5, r=0.05, lr=LR, momentum=0.9, nesterov=True, weight_decay=1e-3)
    straight = mlp()
    opt = GNP(straight.parameters(), **kw)
    for i in range(4):
        opt.step(closure_for(straight, *batch(seed=10 + i)))

    first = mlp()
    opt = GNP(first.parameters(), **kw)
    for i in range(2):
        opt.step(closure_for(first, *batch(seed=10 + i)))
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = mlp(seed=123)
    resumed.load_state_dict(saved["model"])
    opt = GNP(resumed.parameters(), **kw)
    opt.load_state_dict(saved["optimizer"])
    assert opt.param_groups[0]["l2"] == 1e-3 and opt.param_groups[0]["weight_decay"] == 0
    for i in range(2, 4):
        opt.step(closure_for(resumed, *batch(seed=10 + i)))
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_weight_decay_in_the_base_optimizer_is_applied_after_the_mix():
    model, (x, y) = mlp(), batch()
    g = reference_gradient(model, x, y, "gnp", 0.5, 0.05, l2=0.0)
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    GNP(model.parameters(), alpha=0.5, r=0.05, lr=LR, weight_decay=0.01, weight_decay_mode="base").step(
        closure_for(model, x, y)
    )
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), theta[k] - LR * (g[k] + 0.01 * theta[k]), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [dict(alpha=0.5, r=-0.1), dict(alpha=float("nan"), r=0.1), dict(alpha=0.5, r=0.1, variant="adam"),
     dict(alpha=0.5, r=0.1, variant="sam"), dict(alpha=0.5, r=0.1, variant="fgr", mix="official")],
)
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        GNP(mlp().parameters(), lr=LR, **kwargs)
