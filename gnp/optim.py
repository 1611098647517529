"""Gradient-regularized optimizers: GNP (Zhao, Zhang, Hu, ICML 2022) and its finite-difference relatives.

One wrapper around a base torch optimizer. Algorithm 1 of the GNP paper, for one step:

    g1 = ∇L(θ)                              first pass (local to this rank under DDP: no all-reduce)
    θ' = θ + r·g1/‖g1‖                       ascent along the normalized gradient
    g2 = ∇L(θ')                             second pass (DDP all-reduces here, once)
    g  = (1 − α)·g1 + α·g2                  α = λ/r; α = 0 is plain training, α = 1 is SAM
    θ  ← base_optimizer.step(θ, g)          from θ, never from θ'

The same two passes give the family of Karakida et al. (ICML 2023), with ε = r and γ = α·r:

    variant   θ'              g                       exact gradient it approximates
    gnp       θ + r·g1/‖g1‖   (1 − α)·g1 + α·g2       ∇[L + α·r·‖∇L‖]
    sam       θ + r·g1/‖g1‖   g2                      gnp with α = 1
    fgr       θ + r·g1        (1 − α)·g1 + α·g2       ∇[L + (α·r/2)·‖∇L‖²]   forward difference, ascent
    bgr       θ − r·g1        (1 + α)·g1 − α·g2       ∇[L + (α·r/2)·‖∇L‖²]   backward difference, descent
    db        —               g1 + α·r·H·g1/‖g1‖      ∇[L + α·r·‖∇L‖] by double backprop (reference)
    standard  —               g1                      one pass

Choices that follow the paper and the official JAX code (zhaoyang-0204/gnp):
- ‖g1‖ is one global L2 norm over all parameters; a zero g1 gives no NaN (the step is the base step).
- Weight decay is an L2 term of the loss by default (`weight_decay_mode="l2"`), so g1, the perturbation
  direction and g2 include it; `"base"` hands it to the base optimizer instead.
- `mix="official"` is the JAX code's default, g = (1 − α)·g1/‖g1‖ + α·g2; the paper's raw g1 is default.
- Under DDP, pass the wrapped module as `model`: the first pass runs under `no_sync()` and each rank
  perturbs along its own g1 (m-sharpness, as the official code); the second backward then all-reduces
  (1 − α)·g1 + α·g2 in one go, the same traffic as standard training. `sync_perturbation=True` perturbs
  along the all-reduced g1 instead, at the cost of a second all-reduce.
- Given `model`, BatchNorm running statistics are updated by the first pass only.
- Clipping (`clip_grad_norm`) applies to the final g; with an fp16 `grad_scaler`, a step whose g1 or g2
  holds inf/nan is skipped whole (on every rank alike), and this optimizer calls the scaler's step and
  update itself.

The closure runs forward and backward and returns the loss, without zeroing gradients: the optimizer owns
`.grad` between the passes. For `db` it must accept `create_graph` and pass it to `loss.backward`.
"""

import contextlib
import math
import warnings

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

VARIANTS = ("standard", "gnp", "sam", "fgr", "bgr", "db")


class GNP(torch.optim.Optimizer):
    def __init__(
        self,
        params,
        base_optimizer=torch.optim.SGD,
        *,
        alpha: float,
        r: float,
        variant: str = "gnp",
        mix: str = "paper",
        weight_decay: float = 0.0,
        weight_decay_mode: str = "l2",
        model: torch.nn.Module | None = None,
        sync_perturbation: bool = False,
        clip_grad_norm: float | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        **base_kwargs,
    ):
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
        if not (math.isfinite(alpha) and math.isfinite(r)) or r < 0:
            raise ValueError(f"alpha must be finite and r finite and >= 0; got alpha={alpha}, r={r}")
        if variant == "sam" and alpha != 1:
            raise ValueError(f"variant 'sam' is gnp with alpha=1; got alpha={alpha}")
        if variant == "standard" and alpha != 0:
            raise ValueError(f"variant 'standard' has alpha=0; got alpha={alpha}")
        if mix not in ("paper", "official") or (mix == "official" and variant != "gnp"):
            raise ValueError(f"mix must be 'paper', or 'official' with variant 'gnp'; got {mix!r} for {variant!r}")
        if weight_decay_mode not in ("l2", "base"):
            raise ValueError(f"weight_decay_mode must be 'l2' or 'base', got {weight_decay_mode!r}")
        if variant == "db" and isinstance(model, DistributedDataParallel):
            raise ValueError("variant 'db' (double backprop) is the single-process reference; DDP cannot run it")

        super().__init__(params, dict(weight_decay=weight_decay))
        for group in self.param_groups:  # put the decay where the chosen mode applies it
            group["l2"] = group["weight_decay"] if weight_decay_mode == "l2" else 0.0
            if weight_decay_mode == "l2":
                group["weight_decay"] = 0.0
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

        self.alpha, self.r, self.variant, self.mix = alpha, r, variant, mix
        self.model, self.sync_perturbation = model, sync_perturbation
        self.clip_grad_norm, self.grad_scaler = clip_grad_norm, grad_scaler
        self.grad_norm = None  # ‖g1‖ of the last step (a tensor, so logging costs no device sync)

    # ---- the step -------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure):
        if closure is None:
            raise ValueError("GNP needs a closure that runs forward and backward and returns the loss")
        self.zero_grad(set_to_none=True)
        if self.variant == "db":
            loss = self._double_backprop_step(closure)
        elif self.variant == "standard" or self.alpha == 0:  # g = g1 (or g1/‖g1‖): one pass
            loss = self._one_pass_step(closure)
        else:
            loss = self._two_pass_step(closure)
        self._base_step()
        return loss

    def _two_pass_step(self, closure):
        with self._local_gradients(), torch.enable_grad():
            loss = closure()  # g1 = ∇L(θ), this rank's alone
        params = self._params()
        g1 = [p.grad for p in params]
        scale = self._grad_scale()
        if scale != 1.0:
            torch._foreach_div_(g1, scale)  # g1 in true units before its norm
        self._add_l2(params, g1, 1.0)
        if self.sync_perturbation:
            self._all_reduce_mean(g1)
        g1_norm = self.grad_norm = torch.nn.utils.get_total_norm(g1)

        theta = torch._foreach_mul(params, 1.0)  # keep θ to restore it exactly
        torch._foreach_add_(params, torch._foreach_mul(g1, self._ascent(g1_norm)))  # θ' = θ + e

        # Pre-load .grad so that the second, synced backward accumulates and all-reduces
        # scale·(a·g1 + b·g2) / b, with g2 including its L2 term at θ'; then multiply by b.
        a, b = self._mix_weights(g1_norm)
        torch._foreach_mul_(g1, a / b * scale)
        self._add_l2(params, g1, scale)
        with self._running_stats_frozen(), torch.enable_grad():
            closure()  # g2 = ∇L(θ'), added onto the pre-loaded g1 and all-reduced once
        torch._foreach_mul_([p.grad for p in params], b)
        torch._foreach_copy_(params, theta)  # back to θ: the base step starts from θ, not θ'
        return loss

    def _one_pass_step(self, closure):
        with torch.enable_grad():
            loss = closure()
        params = self._params()
        grads = [p.grad for p in params]
        scale = self._grad_scale()
        self._add_l2(params, grads, scale)
        self.grad_norm = torch.nn.utils.get_total_norm(grads) / scale
        a, _ = self._mix_weights(self.grad_norm)
        if self.mix == "official":  # α = 0 with the official mix: g = g1/‖g1‖
            torch._foreach_mul_(grads, a)
        return loss

    def _double_backprop_step(self, closure):
        """The exact gradient of L + α·r·‖∇L‖: g1 + α·r·H·g1/‖g1‖ (H·v by differentiating ‖g1‖)."""
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
            loss = closure(create_graph=True)
            params = self._params()
            l2 = [group["l2"] for group in self.param_groups for p in group["params"] if p.grad is not None]
            g1 = [p.grad + wd * p for p, wd in zip(params, l2, strict=True)]
            g1_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in g1]))
            if g1_norm.item() > 0:
                h_g1 = torch.autograd.grad(g1_norm, params)  # H·g1/‖g1‖
            else:
                h_g1 = [torch.zeros_like(p) for p in params]
        for p, g, hg in zip(params, g1, h_g1, strict=True):
            p.grad = g.detach() + self.alpha * self.r * hg
        self.grad_norm = g1_norm.detach()
        return loss

    def _base_step(self):
        """Clip the final g, then the base optimizer's step (through the fp16 scaler when there is one)."""
        scaler = self.grad_scaler
        if scaler is not None and scaler.is_enabled():
            if self.clip_grad_norm is not None:
                scaler.unscale_(self.base_optimizer)
                torch.nn.utils.clip_grad_norm_(self._params(), self.clip_grad_norm)
            scaler.step(self.base_optimizer)  # skipped whole if g holds inf/nan
            scaler.update()
        else:
            if self.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self._params(), self.clip_grad_norm)
            self.base_optimizer.step()

    # ---- the variants ---------------------------------------------------------------------------------

    def _ascent(self, g1_norm):
        """The perturbation per unit of g1: θ' = θ + (this)·g1."""
        if self.variant == "fgr":
            return self.r
        if self.variant == "bgr":
            return -self.r
        return torch.where(g1_norm > 0, self.r / g1_norm, 0.0)  # gnp, sam: a zero g1 leaves θ' = θ

    def _mix_weights(self, g1_norm):
        """(a, b) with g = a·g1 + b·g2."""
        alpha = self.alpha
        if self.variant == "bgr":
            return 1 + alpha, -alpha
        if self.mix == "official":
            return torch.where(g1_norm > 0, (1 - alpha) / g1_norm, 0.0), alpha
        return 1 - alpha, alpha

    # ---- plumbing -------------------------------------------------------------------------------------

    def _params(self):
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None]

    def _add_l2(self, params, grads, scale):
        """grads += scale · wd · θ, per parameter group (the paper's L2 term inside the gradient)."""
        index = {id(p): g for p, g in zip(params, grads, strict=True)}
        for group in self.param_groups:
            if group["l2"] == 0:
                continue
            pairs = [(p, index[id(p)]) for p in group["params"] if id(p) in index]
            if pairs:
                torch._foreach_add_([g for _, g in pairs], [p for p, _ in pairs], alpha=group["l2"] * scale)

    def _grad_scale(self) -> float:
        scaler = self.grad_scaler
        return scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0

    def _local_gradients(self):
        """DDP's no_sync() around the first forward and backward: g1 stays on this rank."""
        if isinstance(self.model, DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _running_stats_frozen(self):
        """BatchNorm normalizes with batch statistics in the second pass but leaves its running ones."""
        modules = [] if self.model is None else self.model.modules()
        frozen = [m for m in modules if isinstance(m, _BatchNorm) and m.track_running_stats]
        for m in frozen:
            m.track_running_stats = False
        try:
            yield
        finally:
            for m in frozen:
                m.track_running_stats = True

    @staticmethod
    def _all_reduce_mean(grads):
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= torch.distributed.get_world_size()
        for g, averaged in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            g.copy_(averaged.view_as(g))

    # ---- checkpoints: the base optimizer's state (momentum buffers) -----------------------------------

    def state_dict(self):
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict):
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
