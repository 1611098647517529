"""Gradient-regularized optimizers: GNP (Zhao, Zhang, Hu, ICML 2022) and its relatives, in one wrapper.

Algorithm 1 of the GNP paper, for one step (`_two_pass_step` below reads the same way):

    g1 = ∇L(θ)                              first pass (local to this rank under DDP: no all-reduce)
    θ' = θ + e                               e: the variant's perturbation (gnp: r·g1/‖g1‖)
    g2 = ∇L(θ')                             second pass (DDP all-reduces here, once)
    g  = a·g1 + b·g2                        (a, b): the variant's mix (gnp: 1 − α, α; α = λ/r)
    θ  ← base_optimizer.step(θ, g)          from θ, never from θ'

Each variant is one object of gnp.variants (its table of formulas: `python -m gnp.variants`): a one-pass,
two-pass or double-backprop step, and for two passes its perturbation and its mix. α = 0 and
`regularize=False` make any variant's step a one-pass step, g = g1.

Choices that follow the paper and the official JAX code (zhaoyang-0204/gnp):
- ‖g1‖ is one global L2 norm over all parameters; a zero g1 gives no NaN (the step is the base step).
- Weight decay is an L2 term of the loss by default (`weight_decay_mode="l2"`), so g1, the perturbation
  direction and g2 include it; `"base"` hands it to the base optimizer instead.
- `mix="official"` is the JAX code's default, g = (1 − α)·g1/‖g1‖ + α·g2; the paper's raw g1 is default. A
  one-pass step (standard, α = 0, warm-up and amortized steps) is g = g1 under either mix, as there.
- Pass the model as `model` (or the module itself as `params`): its BatchNorm running statistics are then
  updated by the first pass only, and both passes see the same dropout masks (`same_dropout_masks`, as the
  official code gives both passes one key). Under DDP, pass the wrapped module: the first pass runs under
  `no_sync()` and each rank perturbs along its own g1 (m-sharpness, as the official code); the second
  backward then all-reduces a·g1 + b·g2 in one go, the same traffic as standard training.
  `sync_perturbation=True` perturbs along the all-reduced g1 instead, at the cost of a second all-reduce.
- Clipping (`clip_grad_norm`) applies to the final g. With an fp16 `grad_scaler` the optimizer unscales
  before every norm, calls the scaler's step and update itself, and a step whose g holds inf/nan is
  skipped whole (`skipped` tells, on the device): routine for fp16, not divergence.

The closure runs forward and backward and returns the loss, without zeroing gradients: the optimizer owns
`.grad` between the passes (a closure that zeroes them is refused with `ClosureZeroedGradients`). For `db` it must accept `create_graph` and pass it to `loss.backward`.
`grad_norm` after a step is ‖∇L(θ)‖ of the data loss (no L2 term) on this rank's batch, a device tensor.
"""

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Callable

import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from gnp import passes, variants
from gnp.variants import Step


@dataclasses.dataclass
class FirstPass:
    """What a two-pass variant's perturbation sees after pass 1, and the tensor operations it is written in
    (gnp.variants stays torch-free)."""

    params: list  # θ: the parameters with a gradient
    g1: list  # ∇L(θ) in true units, with its L2 term
    g1_norm: torch.Tensor  # ‖g1‖, one global L2 norm
    r: float
    options: dict  # the variant's own settings
    is_weight: Callable  # a weight (not a bias) by the model's parameter names

    mul = staticmethod(torch._foreach_mul)  # tensors × a scalar, a tensor or as many tensors
    norm = staticmethod(torch.nn.utils.get_total_norm)  # one global L2 norm over tensors

    @staticmethod
    def per(length, norm):
        """length/norm, and 0 for a zero norm: a zero gradient perturbs nothing (no NaN)."""
        return torch.where(norm > 0, length / norm, 0.0)


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
        same_dropout_masks: bool = True,
        clip_grad_norm: float | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        variant_options: dict | None = None,
        **base_kwargs,
    ):
        if variant not in variants.REGISTRY:
            raise ValueError(f"unknown variant {variant!r}; choose one of {tuple(variants.REGISTRY)}")
        spec = variants.REGISTRY[variant]
        if not (math.isfinite(alpha) and math.isfinite(r)) or r < 0:
            raise ValueError(f"alpha must be finite and r finite and >= 0; got alpha={alpha}, r={r}")
        if not spec.allows(alpha):
            raise ValueError(f"variant {variant!r} takes {spec.alpha_rule()}; got alpha={alpha}")
        if mix not in ("paper", "official") or (mix == "official" and not spec.official_mix):
            raise ValueError(f"mix must be 'paper', or 'official' with variant 'gnp'; got {mix!r} for {variant!r}")
        if weight_decay_mode not in ("l2", "base"):
            raise ValueError(f"weight_decay_mode must be 'l2' or 'base', got {weight_decay_mode!r}")
        if isinstance(params, torch.nn.Module):  # the plain single-module case: it is the model too
            model, params = model or params, params.parameters()
        if not spec.ddp and isinstance(model, DistributedDataParallel):
            raise ValueError(f"variant {variant!r} is the single-process reference; DDP cannot run it")
        if spec.needs_model and model is None:
            raise ValueError(f"variant {variant!r} needs model= (it tells weights from biases by name)")
        if model is None and spec.step is Step.TWO_PASSES:
            warnings.warn("GNP without model=: BatchNorm running statistics update in both passes and the "
                          "passes draw different dropout masks; pass model= (or the module as params)",
                          stacklevel=2)
        self.options = variants.check_options(variant, variant_options or {})

        super().__init__(params, dict(weight_decay=weight_decay))
        for group in self.param_groups:  # put the decay where the chosen mode applies it
            group["l2"] = group["weight_decay"] if weight_decay_mode == "l2" else 0.0
            if weight_decay_mode == "l2":
                group["weight_decay"] = 0.0
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

        self.alpha, self.r, self.variant, self.mix = alpha, r, spec, mix
        self.model, self.sync_perturbation, self.same_dropout_masks = model, sync_perturbation, same_dropout_masks
        self.clip_grad_norm, self.grad_scaler = clip_grad_norm, grad_scaler
        self.weights = {id(p) for name, p in (model.named_parameters() if model else ()) if "weight" in name}
        self._batchnorms = [m for m in (model.modules() if model else ()) if isinstance(m, _BatchNorm)]
        self._cuda = None  # the GPUs whose generators pass 2 replays, found at the first step
        self.grad_norm = None  # ‖∇L‖ of the last step on this rank's batch (a tensor: logging costs no sync)
        self.skipped = None  # the last step was skipped by the fp16 scaler (a bool tensor), or None
        self.regularized = False  # the last step was a regularized one (two passes or double backprop)
        self.all_reduces = 0  # DDP bucket all-reduces so far (a step of any variant does one per bucket)
        self._local_sq = None
        if isinstance(model, DistributedDataParallel):
            model.register_comm_hook(self, _all_reduce_noting_local_norm)

    def is_weight(self, p) -> bool:
        return id(p) in self.weights

    # ---- the step -------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure, regularize: bool = True):
        """One step; `regularize=False` makes it a standard one-pass step (amortized or warm-up steps)."""
        if closure is None:
            raise ValueError("GNP needs a closure that runs forward and backward and returns the loss")
        self.zero_grad(set_to_none=True)
        kind = self.variant.step_at(self.alpha) if regularize else Step.ONE_PASS
        self.regularized = kind is not Step.ONE_PASS
        take = {Step.ONE_PASS: self._one_pass_step, Step.TWO_PASSES: self._two_pass_step,
                Step.DOUBLE_BACKPROP: self._double_backprop_step}[kind]
        loss, params = take(closure)
        self._base_step(params)
        return loss

    def _two_pass_step(self, closure):
        rng = self._rng_state()
        with self._local_gradients(), passes.first_of_two(), torch.enable_grad():
            loss = closure()  # g1 = ∇L(θ), this rank's alone (shake layers: through their forward gates)
        params, g1, scale = self._gradients()
        if self.sync_perturbation:
            self._all_reduce_mean(g1)
        first = FirstPass(params, g1, torch.nn.utils.get_total_norm(g1), self.r, self.options, self.is_weight)
        e = self.variant.perturbation(first)
        a, b = self._mix(first.g1_norm)

        theta = torch._foreach_mul(params, 1.0)  # keep θ to restore it exactly: the one extra copy
        try:
            torch._foreach_add_(params, e)  # θ' = θ + e
            # Pre-load .grad so that the second, synced backward accumulates and all-reduces
            # scale·(a·g1 + b·g2)/b, with g2 including its L2 term at θ'; then multiply by b.
            torch._foreach_mul_(g1, a / b if scale is None else scale * (a / b))
            self._add_l2(scale)
            with self._running_stats_kept(), self._replayed_rng(rng), _preload_kept(params), torch.enable_grad():
                closure()  # g2 = ∇L(θ'), added onto the pre-loaded g1 and all-reduced once
            torch._foreach_mul_([p.grad for p in params], b)  # g = a·g1 + b·g2
        finally:
            torch._foreach_copy_(params, theta)  # back to θ: the base step starts from θ, not θ'
        return loss, params

    def _mix(self, g1_norm):
        """The variant's (a, b); mix="official" puts a/‖g1‖ in place of a."""
        a, b = self.variant.mix(self.alpha)
        return (FirstPass.per(a, g1_norm) if self.mix == "official" else a), b

    def _one_pass_step(self, closure):
        self._local_sq = None
        with torch.enable_grad():
            loss = closure()
        params, scale = self._params(), self._grad_scale()
        local_sq = self._local_sq  # DDP: this rank's ‖∇L‖², noted before the all-reduce
        local = local_sq.sqrt() if local_sq is not None else torch.nn.utils.get_total_norm([p.grad for p in params])
        self.grad_norm = local if scale is None else local / scale
        self._add_l2(scale)  # g = g1 under either mix, as the official code's standard step
        return loss, params

    def _double_backprop_step(self, closure):
        """The exact gradient of L + α·r·‖∇L‖: g1 + α·r·H·g1/‖g1‖ (H·v by differentiating ‖g1‖)."""
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
            loss = closure(create_graph=True)
            params, scale = self._params(), self._grad_scale()
            grads = [p.grad if scale is None else p.grad / scale for p in params]  # true units before L2 and norm
            self.grad_norm = torch.nn.utils.get_total_norm([g.detach() for g in grads])
            l2 = [group["l2"] for group in self.param_groups for p in group["params"] if p.grad is not None]
            g1 = [g + wd * p for g, p, wd in zip(grads, params, l2, strict=True)]
            g1_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in g1]))
            if g1_norm.item() > 0:
                h_g1 = torch.autograd.grad(g1_norm, params)  # H·g1/‖g1‖
            else:
                h_g1 = [torch.zeros_like(p) for p in params]
        for p, g, hg in zip(params, g1, h_g1, strict=True):
            g = g.detach() + self.alpha * self.r * hg
            p.grad = g if scale is None else g * scale  # in the scaler's units for its step
        return loss, params

    def _base_step(self, params):
        """Clip the final g, then the base optimizer's step (through the fp16 scaler when there is one)."""
        scaler = self.grad_scaler
        if scaler is not None and scaler.is_enabled():
            scaler.unscale_(self.base_optimizer)
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            self.skipped = ~torch.isfinite(norm)
            if self.clip_grad_norm is not None:
                torch.nn.utils.clip_grads_with_norm_(params, self.clip_grad_norm, norm)
            scaler.step(self.base_optimizer)  # skipped whole if g holds inf/nan
            scaler.update()
        else:
            if self.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
            self.base_optimizer.step()

    # ---- plumbing: foreach operations over lists built once a step ------------------------------------

    def _params(self):
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None]

    def _gradients(self):
        """(params, g1 in true units with its L2 term, the scaler's scale or None); notes ‖∇L‖ for the log."""
        params = self._params()
        g1 = [p.grad for p in params]
        scale = self._grad_scale()
        if scale is not None:
            torch._foreach_div_(g1, scale)
        self.grad_norm = torch.nn.utils.get_total_norm(g1)
        self._add_l2(None)
        return params, g1, scale

    def _add_l2(self, scale):
        """.grad += scale·wd·θ, per parameter group (the paper's L2 term inside the gradient)."""
        for group in self.param_groups:
            if group["l2"] == 0:
                continue
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                decay = torch._foreach_mul(params, group["l2"])
                if scale is not None:
                    torch._foreach_mul_(decay, scale)
                torch._foreach_add_([p.grad for p in params], decay)

    def _grad_scale(self) -> torch.Tensor | None:
        """The fp16 scaler's scale as a device tensor (no host sync), or None without one."""
        scaler = self.grad_scaler
        if scaler is None or not scaler.is_enabled():
            return None
        return scaler.scale(torch.ones((), device=self.param_groups[0]["params"][0].device))

    def _local_gradients(self):
        """DDP's no_sync() around the first forward and backward: g1 stays on this rank."""
        if isinstance(self.model, DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _rng_state(self):
        """The generators' state before pass 1, for pass 2 to replay (same dropout masks)."""
        if not self.same_dropout_masks or self.model is None:
            return None
        if self._cuda is None:
            self._cuda = sorted({p.device.index for p in self.model.parameters() if p.device.type == "cuda"})
        return torch.get_rng_state(), self._cuda, [torch.cuda.get_rng_state(d) for d in self._cuda]

    @contextlib.contextmanager
    def _replayed_rng(self, before):
        """Pass 2 draws what pass 1 drew; afterwards the streams go on from where pass 1 left them."""
        if before is None:
            yield
            return
        cpu, devices, cuda = before
        after = torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]
        torch.set_rng_state(cpu)
        for d, state in zip(devices, cuda, strict=True):
            torch.cuda.set_rng_state(state, d)
        try:
            yield
        finally:
            torch.set_rng_state(after[0])
            for d, state in zip(devices, after[1], strict=True):
                torch.cuda.set_rng_state(state, d)

    @contextlib.contextmanager
    def _running_stats_kept(self):
        """BatchNorm normalizes with batch statistics in the second pass; its running statistics are put
        back afterwards. A copy, not a flag flipped on the modules: a compiled model sees no attribute
        change, so the second pass reuses the first pass's graph instead of recompiling."""
        buffers = [b for m in self._batchnorms if m.track_running_stats
                   for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
        saved = torch._foreach_mul(buffers, 1) if buffers else []
        try:
            yield
        finally:
            if buffers:
                torch._foreach_copy_(buffers, saved)

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


class ClosureZeroedGradients(RuntimeError):
    """The closure zeroed or replaced `.grad` between the passes, where the optimizer keeps g1."""


@contextlib.contextmanager
def _preload_kept(params):
    """Refuse a closure that zeroes the pre-loaded gradients before its backward (optimizer.zero_grad() or
    model.zero_grad(), with set_to_none either way): the step would silently become b·g2. Checked when the
    second backward delivers its first gradient, before anything is accumulated: every .grad must still be
    the tensor the optimizer pre-loaded, unmodified (its version counter unchanged). No device sync."""
    loaded = [(p, p.grad, p.grad._version) for p in params]

    def check(_):
        if any(p.grad is not grad or grad._version != version for p, grad, version in loaded):
            raise ClosureZeroedGradients(
                "the closure zeroed the gradients between GNP's two passes (optimizer.zero_grad() or "
                "model.zero_grad() inside it); GNP zeroes them itself before the first pass: remove that call "
                "from the closure, which should only run forward and backward and return the loss")

    handle = torch.autograd.graph.register_multi_grad_hook([p for p, _, _ in loaded], check, mode="any")
    try:
        yield
    finally:
        handle.remove()


def _all_reduce_noting_local_norm(optimizer: GNP, bucket):
    """DDP comm hook: DDP's own all-reduce, after adding this rank's ‖bucket‖² (the one-pass steps' log)."""
    local = bucket.buffer().float().square().sum()
    optimizer._local_sq = local if optimizer._local_sq is None else optimizer._local_sq + local
    optimizer.all_reduces += 1
    return default_hooks.allreduce_hook(None, bucket)
