"""The optimizer against exact float64 computations (torch.func) on small models."""

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from gnp.optim import GNP

LR = 0.1


@pytest.fixture(autouse=True)
def float64():
    """Exact comparisons in float64, for these tests only (the rest of the suite runs float32)."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


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


def reference_gradient(model, x, y, variant, alpha, r, l2=0.0, mix="paper", eta=0.01):
    """g for one step of each variant, written out from the formulas."""
    f = loss_of(model, x, y, l2)
    theta = {k: v.detach() for k, v in model.named_parameters()}
    g1 = grad(f)(theta)
    n1 = flat_norm(g1)
    if variant == "db":
        penalty_grad = grad(lambda p: flat_norm(grad(f)(p)))(theta)
        return {k: g1[k] + alpha * r * penalty_grad[k] for k in theta}
    if variant == "asam":  # Kwon et al.: T = |θ| + η on weights, 1 on biases; e = r·T²g1/‖T·g1‖
        t = {k: theta[k].abs() + eta if k.endswith("weight") else torch.ones_like(theta[k]) for k in theta}
        t_norm = flat_norm({k: t[k] * g1[k] for k in theta})
        e = {k: r * t[k] ** 2 * g1[k] / t_norm for k in theta}
    else:
        step = {"gnp": r / n1, "sam": r / n1, "fgr": r, "bgr": -r}[variant]
        e = {k: step * g1[k] for k in theta}
    g2 = grad(f)({k: theta[k] + e[k] for k in theta})
    a, b = {"bgr": (1 + alpha, -alpha)}.get(variant, (1 - alpha, alpha))
    if mix == "official":
        a = (1 - alpha) / n1
    return {k: a * g1[k] + b * g2[k] for k in theta}


@pytest.mark.parametrize(
    "variant,alpha,mix",
    [("gnp", 0.3, "paper"), ("gnp", 0.8, "official"), ("sam", 1.0, "paper"), ("fgr", 0.5, "paper"),
     ("bgr", 0.5, "paper"), ("db", 0.4, "paper"), ("gnp", -0.5, "paper"), ("gnp", 1.5, "paper"),
     ("asam", 1.0, "paper"), ("asam", 0.5, "paper")],
)
@pytest.mark.parametrize("l2", [0.0, 0.01])
def test_each_variant_matches_its_formula(variant, alpha, mix, l2):
    model, (x, y), r = mlp(), batch(), 0.05
    expected = reference_gradient(model, x, y, variant, alpha, r, l2, mix)
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = GNP(model, torch.optim.SGD, alpha=alpha, r=r, variant=variant, mix=mix,
              weight_decay=l2, lr=LR)
    opt.step(closure_for(model, x, y))
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), theta[k] - LR * expected[k], rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant,alpha", [("standard", 0.0), ("gnp", 0.3), ("db", 0.3)])
def test_grad_norm_is_the_norm_of_the_data_loss_gradient_for_every_scheme(variant, alpha):
    """One quantity for all schemes: ‖∇L(θ)‖ of the loss alone (the L2 term left out), in true units."""
    model, (x, y) = mlp(), batch()
    g1 = grad(loss_of(model, x, y))({k: v.detach() for k, v in model.named_parameters()})
    opt = GNP(model, alpha=alpha, r=0.05, variant=variant, lr=LR, weight_decay=0.1)
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
        return GNP(model, torch.optim.SGD, alpha=0.0, r=0.05, **kw)

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
        ours = run_steps(lambda m, v=variant: GNP(m, alpha=1.0, r=0.05, variant=v, **kw))
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
    GNP(model, alpha=alpha, r=r, variant=variant, lr=1.0).step(closure_for(model, x, y))
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

    opt = GNP(model, alpha=0.5, r=0.05, lr=LR)
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
    GNP(model, alpha=0.5, r=0.05, lr=LR, model=model).step(closure_for(model, x, y))
    ours, ref = model[1], first_pass_only[1]
    assert torch.equal(ours.running_mean, ref.running_mean)
    assert torch.equal(ours.running_var, ref.running_var)
    assert ours.num_batches_tracked.item() == 1 and ours.track_running_stats


def test_clipping_applies_to_the_final_gradient():
    model, (x, y) = mlp(), batch()
    g = reference_gradient(model, x, y, "gnp", 0.5, 0.05)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    GNP(model, alpha=0.5, r=0.05, lr=1.0, clip_grad_norm=1e-3).step(closure_for(model, x, y))
    moved = {k: before[k] - p.detach() for k, p in model.named_parameters()}
    torch.testing.assert_close(flat_norm(moved), torch.tensor(1e-3), rtol=1e-5, atol=0)
    cos = sum((moved[k] * g[k]).sum() for k in g) / (flat_norm(moved) * flat_norm(g))
    assert cos > 1 - 1e-9  # the direction of the final g, not of g1


@pytest.mark.parametrize("bad_pass", [1, 2])
def test_fp16_scaler_skips_the_whole_step_when_either_pass_overflows(bad_pass):
    torch.set_default_dtype(torch.float32)
    model, (x, y) = mlp(), batch()
    x = x.float()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    opt = GNP(model, alpha=0.5, r=0.05, lr=LR, grad_scaler=scaler)
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


def test_fp16_scaler_step_equals_the_unscaled_step():
    torch.set_default_dtype(torch.float32)
    results = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**10)):
        model, (x, y) = mlp(), batch()
        x = x.float()
        opt = GNP(model, alpha=0.5, r=0.05, lr=LR, weight_decay=0.01, grad_scaler=scaler)

        def closure(scaler=scaler, model=model, x=x, y=y):
            loss = F.cross_entropy(model(x), y)
            (loss if scaler is None else scaler.scale(loss)).backward()
            return loss

        opt.step(closure)
        results.append([p.detach().clone() for p in model.parameters()])
    for p, q in zip(*results, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_a_bf16_autocast_step_is_the_fp32_step_within_bf16_precision():
    torch.set_default_dtype(torch.float32)
    steps = []
    for dtype in (None, torch.bfloat16):
        model, (x, y) = bn_model(), batch(n=64)
        theta = [p.detach().clone() for p in model.parameters()]
        opt = GNP(model, alpha=0.5, r=0.05, lr=LR)

        def closure(model=model, x=x, y=y, dtype=dtype):
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        steps.append(torch.cat([(t - p.detach()).flatten() for t, p in zip(theta, model.parameters(), strict=True)]))
    fp32, bf16 = steps
    # bf16 keeps 8 bits of mantissa: the update agrees to about 1%, not to float32's 1e-6
    assert torch.linalg.vector_norm(bf16 - fp32) / torch.linalg.vector_norm(fp32) < 0.03
    assert not torch.equal(bf16, fp32)


ROUND_TRIPS = {  # base optimizer: (its settings, the state it must checkpoint, the decay groups after loading)
    "sgd": (dict(base_optimizer=torch.optim.SGD, alpha=0.5, momentum=0.9, nesterov=True, weight_decay=1e-3),
            {"momentum_buffer"}, dict(l2=1e-3, weight_decay=0)),
    "adamw": (dict(base_optimizer=torch.optim.AdamW, alpha=0.8, weight_decay=0.3, weight_decay_mode="base"),
              {"exp_avg", "exp_avg_sq", "step"}, dict(l2=0, weight_decay=0.3)),
}


@pytest.mark.parametrize("base", list(ROUND_TRIPS))
def test_checkpoint_round_trip_continues_bit_identically(base):
    settings, state_keys, groups = ROUND_TRIPS[base]
    kw = dict(r=0.05, lr=LR, **settings)
    straight = mlp()
    opt = GNP(straight, **kw)
    for i in range(4):
        opt.step(closure_for(straight, *batch(seed=10 + i)))

    first = mlp()
    opt = GNP(first, **kw)
    for i in range(2):
        opt.step(closure_for(first, *batch(seed=10 + i)))
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert state_keys <= set(saved["optimizer"]["state"][0])
    resumed = mlp(seed=123)
    resumed.load_state_dict(saved["model"])
    opt = GNP(resumed, **kw)
    opt.load_state_dict(saved["optimizer"])
    assert {k: opt.param_groups[0][k] for k in groups} == groups
    for i in range(2, 4):
        opt.step(closure_for(resumed, *batch(seed=10 + i)))
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_weight_decay_in_the_base_optimizer_is_applied_after_the_mix():
    model, (x, y) = mlp(), batch()
    g = reference_gradient(model, x, y, "gnp", 0.5, 0.05, l2=0.0)
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    GNP(model, alpha=0.5, r=0.05, lr=LR, weight_decay=0.01, weight_decay_mode="base").step(
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


def test_db_with_an_fp16_scaler_and_l2_equals_the_unscaled_step():
    """The scaled gradient is unscaled before the L2 term and the norm: same step, same logged norm."""
    torch.set_default_dtype(torch.float32)
    results = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=1024.0)):
        model, (x, y) = mlp(), batch()
        x = x.float()
        opt = GNP(model, alpha=0.4, r=0.05, variant="db", lr=LR, weight_decay=0.5, grad_scaler=scaler)

        def closure(create_graph=False, scaler=scaler, model=model, x=x, y=y):
            loss = F.cross_entropy(model(x), y)
            (loss if scaler is None else scaler.scale(loss)).backward(create_graph=create_graph)
            return loss

        opt.step(closure)
        results.append(([p.detach().clone() for p in model.parameters()], opt.grad_norm))
    (plain, plain_norm), (scaled, scaled_norm) = results
    for p, q in zip(plain, scaled, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plain_norm, scaled_norm, rtol=1e-5, atol=0)


def test_a_skipped_fp16_step_is_flagged_on_the_device_and_a_clean_one_is_not():
    torch.set_default_dtype(torch.float32)
    model, (x, y) = mlp(), batch()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    opt = GNP(model, alpha=0.5, r=0.05, lr=LR, grad_scaler=scaler)
    poison = [True]

    def closure():
        loss = F.cross_entropy(model(x.float()), y)
        scaler.scale(loss).backward()
        if poison[0]:
            next(model.parameters()).grad[0, 0] = float("inf")
        return loss

    loss = opt.step(closure)
    assert torch.isfinite(loss) and opt.skipped.item()
    poison[0] = False
    opt.step(closure)
    assert not opt.skipped.item()


def dropout_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.Dropout(0.5), nn.Linear(32, 3))


@pytest.mark.parametrize("same", [True, False])
def test_both_passes_see_the_same_dropout_masks_by_default(same):
    model, (x, y) = dropout_model(), batch()
    masks = []
    model[1].register_forward_hook(lambda m, i, o: masks.append(o == 0))
    opt = GNP(model, alpha=0.5, r=0.05, lr=LR, same_dropout_masks=same)
    opt.step(closure_for(model, x, y))
    assert len(masks) == 2
    assert torch.equal(masks[0], masks[1]) == same
    # afterwards the stream goes on from where pass 1 left it: the next step's masks are new ones
    opt.step(closure_for(model, x, y))
    assert not torch.equal(masks[2], masks[0])


def test_same_masks_give_the_gradient_of_one_fixed_network():
    """With the masks of pass 1 replayed, g equals the formula on the network with those masks fixed."""
    model, (x, y) = dropout_model(), batch()
    torch.manual_seed(7)
    masks = []
    hook = model[1].register_forward_hook(lambda m, i, o: masks.append((o != 0).to(o.dtype) * 2.0))
    model(x)
    hook.remove()
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}

    def f(params):
        h = torch.func.functional_call(model[0], {k[2:]: v for k, v in params.items() if k.startswith("0.")}, (x,))
        out = torch.func.functional_call(model[2], {k[2:]: v for k, v in params.items() if k.startswith("2.")},
                                         (h * masks[0],))
        return F.cross_entropy(out, y)

    g1 = grad(f)(theta)
    g2 = grad(f)({k: theta[k] + 0.05 * g1[k] / flat_norm(g1) for k in theta})
    expected = {k: 0.5 * g1[k] + 0.5 * g2[k] for k in theta}
    torch.manual_seed(7)
    GNP(model, alpha=0.5, r=0.05, lr=LR).step(closure_for(model, x, y))
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), theta[k] - LR * expected[k], rtol=0, atol=1e-12)


def test_an_exception_in_the_second_pass_leaves_the_weights_at_theta():
    model, (x, y) = mlp(), batch()
    theta = [p.detach().clone() for p in model.parameters()]
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("simulated")
        return closure_for(model, x, y)()

    with pytest.raises(torch.OutOfMemoryError):
        GNP(model, alpha=0.5, r=0.05, lr=LR).step(closure)
    assert all(torch.equal(p, q) for p, q in zip(theta, model.parameters(), strict=True))


def test_without_the_model_a_two_pass_optimizer_warns_about_batchnorm_and_dropout():
    model = bn_model()
    with pytest.warns(UserWarning, match="BatchNorm running statistics"):
        GNP(model.parameters(), alpha=0.5, r=0.05, lr=LR)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GNP(model, alpha=0.5, r=0.05, lr=LR)  # the module itself: its BatchNorm is found
        GNP(model.parameters(), alpha=0.0, r=0.05, variant="standard", lr=LR)  # one pass: nothing to warn


def test_asam_needs_the_model_to_tell_weights_from_biases():
    with pytest.raises(ValueError, match="needs model="):
        GNP(mlp().parameters(), alpha=1.0, r=0.05, variant="asam", lr=LR)


def test_regularize_false_makes_a_standard_one_pass_step():
    reference, model, (x, y) = mlp(), mlp(), batch()
    calls = []
    GNP(reference, alpha=0.0, r=0.05, variant="standard", lr=LR).step(closure_for(reference, x, y))
    opt = GNP(model, alpha=0.5, r=0.05, lr=LR)
    opt.step(lambda: (calls.append(1), closure_for(model, x, y)())[1], regularize=False)
    assert len(calls) == 1
    assert all(torch.equal(p, q) for p, q in zip(reference.parameters(), model.parameters(), strict=True))


@pytest.mark.parametrize("variant,alpha", [("standard", 0.0), ("gnp", 0.5), ("sam", 1.0), ("fgr", 0.5),
                                           ("bgr", 0.5), ("asam", 1.0)])
def test_every_scalar_of_a_step_lives_on_the_parameters_device(variant, alpha):
    """The meta device refuses a mix with CPU tensors as CUDA does: a step on it finds any CPU scalar."""
    torch.set_default_dtype(torch.float32)
    model = bn_model().to("meta")
    x, y = torch.randn(16, 6, device="meta"), torch.zeros(16, dtype=torch.long, device="meta")
    opt = GNP(model, alpha=alpha, r=0.05, variant=variant, lr=LR, momentum=0.9, weight_decay=1e-4,
              clip_grad_norm=5.0, grad_scaler=torch.amp.GradScaler("cpu", enabled=False))
    opt.step(closure_for(model, x, y))
    assert opt.grad_norm.device.type == "meta"


def test_a_compiled_model_is_traced_once_for_both_passes():
    """BatchNorm's running statistics are kept by a copy, not a flag flipped on the modules, so the second
    pass reuses the first pass's graph (flipping `track_running_stats` made a second graph, measured)."""
    from torch._dynamo.testing import CompileCounter

    torch.set_default_dtype(torch.float32)
    torch._dynamo.reset()
    counter, model = CompileCounter(), bn_model()
    compiled = torch.compile(model, backend=counter)
    opt = GNP(compiled, alpha=0.5, r=0.05, lr=LR, momentum=0.9)
    x, y = batch()
    for _ in range(4):
        opt.step(closure_for(compiled, x.float(), y))
    assert counter.frame_count == 1
    assert model[1].num_batches_tracked.item() == 4  # pass 1 of each step only


# ---- one-pass steps: g = g1 under either mix ------------------------------------------------------------


@pytest.mark.parametrize("mix", ["paper", "official"])
@pytest.mark.parametrize("variant,alpha,regularize", [("standard", 0.0, True), ("gnp", 0.0, True),
                                                      ("gnp", 0.8, False)])
def test_a_one_pass_step_is_g1_under_either_mix(variant, alpha, regularize, mix):
    """Standard training, α = 0 and the standard steps of an amortized, hybrid or "zero"-warm-up run take the
    plain gradient g1 (with its L2 term), as the official code's standard step does, whatever the mix."""
    model, (x, y), l2 = mlp(), batch(), 0.01
    g1 = grad(loss_of(model, x, y, l2))({k: v.detach() for k, v in model.named_parameters()})
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = GNP(model, alpha=alpha, r=0.05, variant=variant, mix=mix, weight_decay=l2, lr=LR)
    opt.step(closure_for(model, x, y), regularize=regularize)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), theta[k] - LR * g1[k], rtol=0, atol=1e-12)


# ---- a closure that zeroes the gradients ----------------------------------------------------------------

ZEROING = {
    "optimizer.zero_grad()": lambda opt, model: opt.zero_grad(),
    "optimizer.zero_grad(set_to_none=False)": lambda opt, model: opt.zero_grad(set_to_none=False),
    "model.zero_grad()": lambda opt, model: model.zero_grad(),
    "model.zero_grad(set_to_none=False)": lambda opt, model: model.zero_grad(set_to_none=False),
}


def zeroing_closure(zero, opt, model, x, y):
    """The closure torch's documentation shows: zero the gradients, forward, backward, return the loss."""

    def closure(create_graph=False):
        zero(opt, model)
        loss = F.cross_entropy(model(x), y)
        loss.backward(create_graph=create_graph)
        return loss

    return closure


@pytest.mark.parametrize("how", list(ZEROING))
@pytest.mark.parametrize("variant,alpha", [("gnp", 0.6), ("sam", 1.0), ("fgr", 0.5), ("bgr", 0.5),
                                           ("asam", 0.5)])
def test_a_two_pass_closure_that_zeroes_the_gradients_is_refused_and_leaves_theta(variant, alpha, how):
    from gnp.optim import ClosureZeroedGradients

    model, (x, y) = mlp(), batch()
    theta = [p.detach().clone() for p in model.parameters()]
    opt = GNP(model, alpha=alpha, r=0.05, variant=variant, lr=LR)
    with pytest.raises(ClosureZeroedGradients, match="remove that call from the closure"):
        opt.step(zeroing_closure(ZEROING[how], opt, model, x, y))
    assert all(torch.equal(p, q) for p, q in zip(theta, model.parameters(), strict=True))


@pytest.mark.parametrize("how", list(ZEROING))
@pytest.mark.parametrize("variant,alpha", [("db", 0.4), ("standard", 0.0)])
def test_a_one_pass_closure_may_zero_the_gradients_first(variant, alpha, how):
    """db and standard steps call the closure once, on gradients the optimizer has just cleared: zeroing
    them first changes nothing, so it is allowed and the update is exact."""
    model, (x, y) = mlp(), batch()
    expected = reference_gradient(model, x, y, "db", alpha, 0.05, l2=0.01)
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = GNP(model, alpha=alpha, r=0.05, variant=variant, weight_decay=0.01, lr=LR)
    opt.step(zeroing_closure(ZEROING[how], opt, model, x, y))
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), theta[k] - LR * expected[k], rtol=0, atol=1e-12)
