"""The official CIFAR networks (WRN-28-10, WRN-26 Shake-Shake 2×96d, PyramidNet with ShakeDrop) and their
shake layers: parameter counts, initializations, shortcuts by hand, the gates' laws, and which gates the
backward uses in and outside the first pass of a GNP step."""

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gnp import passes
from gnp.nets import pyramidnet, shakeshake, wrn
from gnp.nets.layers import Conv2dSame
from gnp.nets.shake import ShakeDrop, ShakeShake, shake_drop, shake_shake

NETS = {  # name: (build with 10 classes, parameters, whether its training forward is random)
    "WRN-28-10": (lambda: wrn.wrn28_10(10), 36_220_634, False),
    "WRN-26-ShakeShake-2x96d": (lambda: shakeshake.wrn26_shakeshake_2x96d(10), 26_192_922, True),
    "PyramidNet-272-200-ShakeDrop": (lambda: pyramidnet.pyramidnet_shakedrop(272, 200, 10), 26_210_842, True),
    "PyramidNet-164-270-ShakeDrop": (lambda: pyramidnet.pyramidnet_shakedrop(164, 270, 10), 27_216_021, True),
}


@pytest.fixture(scope="module", params=list(NETS))
def net(request):
    """Each network built once per module (pytest groups the tests by it)."""
    torch.manual_seed(0)
    return request.param, NETS[request.param][0]()


def _forward(model, seed, train):
    model.train(train)
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))


def test_parameter_counts(net):
    name, model = net
    assert sum(p.numel() for p in model.parameters()) == NETS[name][1]


def test_training_forward_depends_on_the_generator_state_only(net):
    name, model = net
    first, again, other = _forward(model, 1, True), _forward(model, 1, True), _forward(model, 2, True)
    assert first.shape == (2, 10) and torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert torch.equal(first, other) != NETS[name][2]  # a shake network draws new gates, WRN has none


def test_evaluation_is_deterministic_and_draws_nothing(net):
    _, model = net
    first = _forward(model, 6, False)
    after = torch.get_rng_state()
    torch.manual_seed(6)
    assert torch.equal(after, torch.get_rng_state())
    assert first.shape == (2, 10) and torch.equal(first, _forward(model, 7, False))


def test_official_initializations(net):
    """Convolutions N(0, 2/fan_out) without bias, strided ones padded the TF way; BatchNorm 1 and 0; the
    dense layer U(±1/√10) with a zero bias."""
    _, model = net
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    normalized = []
    for c in convs:
        assert c.bias is None and (c.stride == (1, 1) or isinstance(c, Conv2dSame))
        w = c.weight.detach().flatten() / math.sqrt(2 / (c.out_channels * c.kernel_size[0] * c.kernel_size[1]))
        assert 0.75 < w.std().item() < 1.25
        normalized.append(w)
    normalized = torch.cat(normalized)
    assert abs(normalized.std().item() - 1) < 0.01 and abs(normalized.mean().item()) < 0.01
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0) and bn.momentum == 0.1 and bn.eps == 1e-5
    (dense,) = [m for m in model.modules() if isinstance(m, nn.Linear)]
    bound, w = 1 / math.sqrt(10), dense.weight.detach()
    assert 0.98 * bound < w.abs().max() <= bound and abs(w.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    assert torch.count_nonzero(dense.bias) == 0


def test_pyramidnet_widths_strides_and_survival_probabilities():
    torch.manual_seed(0)
    blocks = [m for m in pyramidnet.pyramidnet_shakedrop(29, 90, 10) if isinstance(m, pyramidnet.Bottleneck)]
    assert len(blocks) == 9  # (29 − 2)/9 = 3 per stage
    assert [b.cout for b in blocks] == [4 * round(16 + 10 * k) for k in range(1, 10)]
    assert [b.stride for b in blocks] == [1, 1, 1, 2, 1, 1, 2, 1, 1]
    assert [b.survival for b in blocks] == pytest.approx([1 - 0.5 * k / 9 for k in range(1, 10)])
    with pytest.raises(ValueError, match="9n"):
        pyramidnet.pyramidnet_shakedrop(270, 200, 10)


def test_wrn_shortcuts_pool_and_pad_with_zeros_and_the_first_block_activates_before_branching():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6)
    first = wrn.Block(4, 8, 1, activation_before_residual=True).eval()
    act = first.act1(x)
    branch = first.conv2(first.act2(first.conv1(act)))
    torch.testing.assert_close(first(x), branch + torch.cat([act, torch.zeros_like(act)], 1))
    widening = wrn.Block(4, 8, 2, activation_before_residual=False).eval()
    branch = widening.conv2(widening.act2(widening.conv1(widening.act1(x))))
    pooled = (x[:, :, ::2, ::2] + x[:, :, 1::2, ::2] + x[:, :, ::2, 1::2] + x[:, :, 1::2, 1::2]) / 4
    torch.testing.assert_close(widening(x), branch + torch.cat([pooled, torch.zeros_like(pooled)], 1))
    assert widening.conv1(x).shape == (2, 8, 3, 3)  # SAME: ceil(6/2)


@pytest.mark.parametrize("stride", [1, 2])
def test_shakeshake_shortcut_subsamples_and_shifts_by_a_pixel(stride):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4)
    shortcut = shakeshake.Shortcut(3, 8, stride).eval()
    shifted = torch.zeros_like(x)
    shifted[:, :, :-1, :-1] = x[:, :, 1:, 1:]  # x[i + 1, j + 1], zeros past the edge
    expected = torch.cat([F.conv2d(x[:, :, ::stride, ::stride], shortcut.conv1.weight),
                          F.conv2d(shifted[:, :, ::stride, ::stride], shortcut.conv2.weight)], 1)
    torch.testing.assert_close(shortcut(x), expected / math.sqrt(1 + 1e-5))  # a fresh BatchNorm, evaluating
    if stride == 2:  # at stride 2 the shifted path takes the odd pixels
        torch.testing.assert_close(shifted[:, :, ::2, ::2], x[:, :, 1::2, 1::2])


def test_blocks_in_evaluation_give_the_expectation_over_the_gates():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6)
    block = shakeshake.Block(4, 8, 2).eval()
    h = F.relu(x)
    torch.testing.assert_close(block(x), block.shortcut(x) + (block.a(h) + block.b(h)) / 2)
    block = pyramidnet.Bottleneck(4, 3, 2, survival=0.6).eval()
    pooled = F.pad(F.avg_pool2d(x, 2), (0, 0, 0, 0, 0, 8))
    torch.testing.assert_close(block(x), 0.6 * block.branch(x) + pooled)
    torch.testing.assert_close(shake_shake(x, 3 * x, training=False), 2 * x)
    torch.testing.assert_close(shake_drop(x, 0.6, training=False), 0.6 * x)  # E[gate] = p + E[α](1 − p), E[α] = 0


def test_gate_laws_match_the_evaluation_expectation():
    """Shake-Shake α ~ U(0, 1); ShakeDrop's forward gate 1 with probability p, else U(−1, 1), its backward
    gate 1 or U(0, 1): the means of many draws are the expectations evaluation uses. (A kept gate is the
    official m + α − mα at m = 1: 1 up to rounding.)"""
    torch.manual_seed(0)
    n, p = 200_000, 0.7
    ones = torch.ones(n, requires_grad=True)
    alpha = ShakeShake.apply(ones, torch.zeros(n))
    assert 0 <= alpha.min() and alpha.max() <= 1 and abs(alpha.mean().item() - 0.5) < 0.005
    forward = ShakeDrop.apply(ones, p)
    forward.sum().backward()
    backward = ones.grad
    kept = ((forward - 1).abs() < 1e-6) & ((backward - 1).abs() < 1e-6)
    assert abs(kept.float().mean().item() - p) < 0.005
    assert abs(forward.mean().item() - shake_drop(torch.ones(()), p, training=False).item()) < 0.005
    assert -1 <= forward[~kept].min() and forward[~kept].max() <= 1 and abs(forward[~kept].mean().item()) < 0.01
    assert 0 <= backward[~kept].min() and backward[~kept].max() <= 1
    assert abs(backward[~kept].mean().item() - 0.5) < 0.01


def _first_of_two(inside):
    return passes.first_of_two() if inside else contextlib.nullcontext()


@pytest.mark.parametrize("inside", [False, True])
def test_shakeshake_backward_uses_the_backward_gates_except_in_the_first_pass(inside):
    torch.manual_seed(0)
    a, b, grad = (torch.randn(3, 2, 2, 2, requires_grad=True) for _ in range(3))
    torch.manual_seed(7)
    alpha, beta = torch.rand(3, 1, 1, 1), torch.rand(3, 1, 1, 1)  # the draws, in the layer's order
    assert not torch.allclose(alpha, beta)
    torch.manual_seed(7)
    with _first_of_two(inside):
        out = ShakeShake.apply(a, b)
    out.backward(grad)  # outside the context: the layer read the flag when it ran forward
    torch.testing.assert_close(out, a * alpha + b * (1 - alpha))
    gate = alpha if inside else beta
    torch.testing.assert_close(a.grad, grad * gate)
    torch.testing.assert_close(b.grad, grad * (1 - gate))


@pytest.mark.parametrize("inside", [False, True])
def test_shakedrop_backward_uses_the_backward_gates_except_in_the_first_pass(inside):
    torch.manual_seed(0)
    x, grad = torch.randn(8, 2, 2, 2, requires_grad=True), torch.randn(8, 2, 2, 2)
    torch.manual_seed(3)
    keep = torch.bernoulli(torch.full((8, 1, 1, 1), 0.5))
    alpha, beta = -1 + 2 * torch.rand(8, 1, 1, 1), torch.rand(8, 1, 1, 1)
    assert 0 < keep.sum() < 8  # kept and dropped samples both
    torch.manual_seed(3)
    with _first_of_two(inside):
        out = ShakeDrop.apply(x, 0.5)
    out.backward(grad)
    forward_gate, backward_gate = keep + alpha - keep * alpha, keep + beta - keep * beta
    torch.testing.assert_close(out, x * forward_gate)
    torch.testing.assert_close(x.grad, grad * (forward_gate if inside else backward_gate))
    kept = keep.flatten() == 1
    torch.testing.assert_close(x.grad[kept], grad[kept])  # a kept block: gate 1 both ways


@pytest.mark.parametrize("layer", [lambda t: ShakeShake.apply(t, -t), lambda t: ShakeDrop.apply(t, 0.5)])
def test_both_passes_draw_the_same_gates(layer):
    """The first pass draws what the second does, so replaying the generators gives both the same gates
    and leaves the later layers' draws alike."""
    x = torch.randn(4, 3, 2, 2)
    outs, states = [], []
    for inside in (True, False):
        torch.manual_seed(11)
        with _first_of_two(inside):
            outs.append(layer(x))
        states.append(torch.get_rng_state())
    assert torch.equal(*outs) and torch.equal(*states)


def test_a_gnp_step_on_a_shake_shake_block_is_the_official_update():
    """Both passes draw the same gates (the optimizer replays the generator); pass 1 backpropagates through
    the forward gate α (true gradient), pass 2 through the backward gate β: g = (1 − a)·g1 + a·g2, written
    here with the gates drawn by hand and a mix whose gradient is β by construction (value α·x + (1 − α)·y,
    gradient β, 1 − β), not with the layer under test."""
    from torch.func import grad

    from gnp.nets.shake import shake_shake
    from gnp.optim import GNP

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x):
            return self.head(torch.tanh(shake_shake(self.a(x), self.b(x), self.training)))

    torch.manual_seed(0)
    model, x, y = Block().double(), torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    torch.manual_seed(11)
    alpha, beta = torch.rand(5, 1).double(), torch.rand(5, 1).double()  # ShakeShake's two draws, in order

    def loss(params, backward_gate):
        def mixed(a, b):
            return a * backward_gate + b * (1 - backward_gate) + (
                (a - b) * (alpha - backward_gate)).detach()

        h_a = torch.nn.functional.linear(x, params["a.weight"], params["a.bias"])
        h_b = torch.nn.functional.linear(x, params["b.weight"], params["b.bias"])
        out = torch.nn.functional.linear(torch.tanh(mixed(h_a, h_b)), params["head.weight"], params["head.bias"])
        return F.cross_entropy(out, y)

    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    g1 = grad(lambda p: loss(p, alpha))(theta)  # the true gradient
    norm = torch.sqrt(sum((g ** 2).sum() for g in g1.values()))
    g2 = grad(lambda p: loss(p, beta))({k: theta[k] + 0.1 * g1[k] / norm for k in theta})
    expected = {k: theta[k] - 0.5 * (0.4 * g1[k] + 0.6 * g2[k]) for k in theta}

    def closure():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt = GNP(model, alpha=0.6, r=0.1, lr=0.5)
    torch.manual_seed(11)
    opt.step(closure)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[k], rtol=0, atol=1e-12)
