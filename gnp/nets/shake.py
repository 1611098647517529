"""Shake-Shake and ShakeDrop as the official code defines them (shake_shake_train/_eval in
models/available_models/wrn_shakeshake.py, shake_drop_train/_eval in pyramidnet_shakedrop.py of
zhaoyang-0204/gnp, both forked from google-research's flax_models/cifar).

In training each sample draws a forward gate and, apart from it, a backward gate: the forward pass mixes
with the one, the gradient is scaled by the other. The first pass of a two-pass GNP step backpropagates
through the forward gates instead (the official `true_gradient`, see gnp.passes), read when the layer runs
forward. The gates come from torch's global generators on the input's device, and both are drawn whatever
the pass, so that the later layers' draws do not depend on it: the optimizer's replay of the generators
gives the two passes of a step the same gates. In evaluation: the expectation over the gates.
"""

import torch

from gnp import passes

SHAKEDROP_ALPHA = (-1.0, 1.0)  # the official forward gate range of a dropped block
SHAKEDROP_BETA = (0.0, 1.0)  # and its backward one


def _uniform(x: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """One U(low, high) gate per sample (float32, as the official code's), broadcast over the rest."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    return low + (high - low) * torch.rand(shape, device=x.device)


class ShakeShake(torch.autograd.Function):
    """a·α + b·(1 − α) forward; the gradients to a and b scaled by β and 1 − β (α, β ~ U(0, 1) per
    sample), or by α and 1 − α in the first pass of a GNP step."""

    @staticmethod
    def forward(ctx, a, b):
        alpha, beta = _uniform(a).to(a.dtype), _uniform(a).to(a.dtype)
        ctx.save_for_backward(alpha if passes.true_gradient() else beta)
        return a * alpha + b * (1 - alpha)

    @staticmethod
    def backward(ctx, grad):
        (gate,) = ctx.saved_tensors
        return grad * gate, grad * (1 - gate)


class ShakeDrop(torch.autograd.Function):
    """x·(m + α − mα) forward, the gradient scaled by m + β − mβ (or the forward gate in the first pass of
    a GNP step): the block survives (gate 1) with probability p (m ~ Bernoulli(p)), else is scaled by
    α ~ U(−1, 1) forward and β ~ U(0, 1) backward, per sample."""

    @staticmethod
    def forward(ctx, x, p):
        keep = torch.bernoulli(torch.full((x.shape[0],) + (1,) * (x.dim() - 1), p, device=x.device))
        alpha, beta = _uniform(x, *SHAKEDROP_ALPHA), _uniform(x, *SHAKEDROP_BETA)
        forward_gate = (keep + alpha - keep * alpha).to(x.dtype)
        backward_gate = (keep + beta - keep * beta).to(x.dtype)
        ctx.save_for_backward(forward_gate if passes.true_gradient() else backward_gate)
        return x * forward_gate

    @staticmethod
    def backward(ctx, grad):
        (gate,) = ctx.saved_tensors
        return grad * gate, None


def shake_shake(a: torch.Tensor, b: torch.Tensor, training: bool) -> torch.Tensor:
    """Shake-Shake's mix of two branches; in evaluation their mean (E[α] = 1/2)."""
    return ShakeShake.apply(a, b) if training else (a + b) * 0.5


def shake_drop(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """ShakeDrop of a residual branch that survives with probability p; in evaluation x·E[gate]."""
    if training:
        return ShakeDrop.apply(x, p)
    expected_alpha = sum(SHAKEDROP_ALPHA) / 2
    return (p + expected_alpha - p * expected_alpha) * x
