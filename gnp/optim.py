"""Gradient-regularized optimizers: GNP (Zhao, Zhang, Hu, ICML 2022) and its relatives, in one wrapper.

Algorithm 1 of the GNP paper, for one step (`_two_pass_step` below reads the same way):

    g1 = ∇L(θ)                              first pass (local to this rank under DDP: no all-reduce)
    θ' = θ + e(θ, g1)                        gnp: e = r·g1/‖g1‖, ascent along the normalized gradient
    g2 = ∇L(θ')                             second pass (DDP all-reduces here, once)
    g  = a·g1 + b·g2                        gnp: (1 − α)·g1 + α·g2; α = λ/r, α = 0 is plain training
    θ  ← base_optimizer.step(θ, g)          from θ, never from θ'

Each variant (the table in gnp.variants) is a perturbation e and a mix (a, b), found by name below:

    variant   e(θ, g1)                    (a, b)               the gradient it approximates
    gnp, sam  r·g1/‖g1‖                   (1 − α, α)           ∇[L + α·r·‖∇L‖]   (sam: α = 1)
    fgr       r·g1                        (1 − α, α)           ∇[L + (α·r/2)·‖∇L‖²]   forward difference
    bgr       −r·g1                       (1 + α, −α)          ∇[L + (α·r/2)·‖∇L‖²]   backward difference
    asam      r·T²g1/‖T·g1‖, T = |θ|+η    (1 − α, α)           adaptive SAM at α = 1 (Kwon et al. 2021)
    db        —                           g1 + α·r·H·g1/‖g1‖   ∇[L + α·r·‖∇L‖] by double backprop
    standard  —                           g1                   one pass

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
import math
import warnings

import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from gnp import passes, variants

# ---- the variants: the perturbation e (tensors like θ) and the mix (a, b) of g = a·g1 + b·g2 ---------------


def normalized_ascent(opt, params, g1, g1_norm):
    """gnp, sam: e = r·g1/‖g1‖ (θ' = θ when g1 = 0)."""
    return torch._foreach_mul(g1, torch.where(g1_norm > 0, opt.r / g1_norm, 0.0))


def forward_difference(opt, params, g1, g1_norm):
    """fgr: e = r·g1."""
    return torch._foreach_mul(g1, opt.r)


def backward_difference(opt, params, g1, g1_norm):
    """bgr: e = −r·g1."""
    return torch._foreach_mul(g1, -opt.r)


def adaptive_ascent(opt, params, g1, g1_norm):
    """asam: e = r·T²g1/‖T·g1‖ with T = |θ| + η on weights and 1 on biases, as Kwon et al.'s code."""
    eta = opt.options["eta"]
    t = [p.abs() + eta if opt.is_weight(p) else torch.ones_like(p) for p in params]
    t_g1 = torch._foreach_mul(t, g1)
    norm = torch.nn.utils.get_total_norm(t_g1)
    return torch._foreach_mul(torch._foreach_mul(t_g1, t), torch.where(norm > 0, opt.r / norm, 0.0))


def interpolation(opt, g1_norm):
    """g = (1 − α)·g1 + α·g2."""
    return 1 - opt.alpha, opt.alpha


def extrapolation(opt, g1_norm):
    """bgr: g = (1 + α)·g1 − α·g2, the backward difference's sign."""
    return 1 + opt.alpha, -opt.alpha


def official_interpolation(opt, g1_norm):
    """mix="official": g = (1 − α)·g1/‖g1‖ + α·g2."""
    return torch.where(g1_norm > 0, (1 - opt.alpha) / g1_norm, 0.0), opt.alpha


PERTURBATIONS = {"gnp": normalized_ascent, "sam": normalized_ascent, "fgr": forward_difference,
                 "bgr": backward_difference, "asam": adaptive_ascent}
MIXES = {"gnp": interpolation, "sam": interpolation, "fgr": interpolation, "bgr": extrapolation,
         "asam": interpolation}
assert set(PERTURBATIONS) == {v.name for v in variants.REGISTRY.values() if v.passes == 2}


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
        if model is None and spec.passes == 2:
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

        self.alpha, self.r, self.variant, self.mix = alpha, r, variant, mix
        self.perturbation = PERTURBATIONS.get(variant)
        self.mix_weights = official_interpolation if mix == "official" else MIXES.get(variant, interpolation)
        self.model, self.sync_perturbation, self.same_dropout_masks = model, sync_perturbation, same_dropout_masks
        self.clip_grad_norm, self.grad_scaler = clip_grad_norm, grad_scaler
        self.weights = {id(p) for name, p in (model.named_parameters() if model else ()) if "weight" in name}
        self.grad_norm = None  # ‖∇L‖ of the last step on this rank's batch (a tensor: logging costs no sync)
        self.skipped = None  # the last step was skipped by the fp16 scaler (a bool tensor), or None
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
        if self.variant == "db" and regularize:
            loss = self._double_backprop_step(closure)
        elif self.perturbation is None or self.alpha == 0 or not regularize:  # g = g1: one pass
            loss = self._one_pass_step(closure)
        else:
            loss = self._two_pass_step(closure)
        self._base_step()
        return loss

    def _two_pass_step(self, closure):
        rng = self._rng_state()
        with self._local_gradients(), passes.first_of_two(), torch.enable_grad():
            loss = closure()  # g1 = ∇L(θ), this rank's alone (shake layers: through their forward gates)
        params, g1, scale = self._gradients()
        if self.sync_perturbation:
            self._all_reduce_mean(g1)
        g1_norm = torch.nn.utils.get_total_norm(g1)

        theta = torch._foreach_mul(params, 1.0)  # keep θ to restore it exactly: the one extra copy
        try:
            torch._foreach_add_(params, self.perturbation(self, params, g1, g1_norm))  # θ' = θ + e
            # Pre-load .grad so that the second, synced backward accumulates and all-reduces
            # scale·(a·g1 + b·g2)/b, with g2 including its L2 term at θ'; then multiply by b.
            a, b = self.mix_weights(self, g1_norm)
            torch._foreach_mul_(g1, scale * (a / b))
            self._add_l2(params, g1, scale)
            with self._running_stats_kept(), self._replayed_rng(rng), _preload_kept(params), torch.enable_grad():
                closure()  # g2 = ∇L(θ'), added onto the pre-loaded g1 and all-reduced once
            torch._foreach_mul_([p.grad for p in params], b)  # g = a·g1 + b·g2
        finally:
            torch._foreach_copy_(params, theta)  # back to θ: the base step starts from θ, not θ'
        return loss

    def _one_pass_step(self, closure):
        self._local_sq = None
        with torch.enable_grad():
            loss = closure()
        params = self._params()
        grads = [p.grad for p in params]
        scale = self._grad_scale()
        local_sq = self._local_sq  # DDP: this rank's ‖∇L‖², noted before the all-reduce
        local = local_sq.sqrt() if local_sq is not None else torch.nn.utils.get_total_norm(grads)
        self.grad_norm = local / scale
        self._add_l2(params, grads, scale)  # g = g1 under either mix, as the official code's standard step
        return loss

    def _double_backprop_step(self, closure):
        """The exact gradient of L + α·r·‖∇L‖: g1 + α·r·H·g1/‖g1‖ (H·v by differentiating ‖g1‖)."""
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
            loss = closure(create_graph=True)
            params = self._params()
            scale = self._grad_scale()
            grads = [p.grad / scale for p in params]  # true units before the L2 term and the norm
            self.grad_norm = torch.nn.utils.get_total_norm([g.detach() for g in grads])
            l2 = [group["l2"] for group in self.param_groups for p in group["params"] if p.grad is not None]
            g1 = [g + wd * p for g, p, wd in zip(grads, params, l2, strict=True)]
            g1_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in g1]))
            if g1_norm.item() > 0:
                h_g1 = torch.autograd.grad(g1_norm, params)  # H·g1/‖g1‖
            else:
                h_g1 = [torch.zeros_like(p) for p in params]
        for p, g, hg in zip(params, g1, h_g1, strict=True):
            p.grad = (g.detach() + self.alpha * self.r * hg) * scale  # in the scaler's units for its step
        return loss

    def _base_step(self):
        """Clip the final g, then the base optimizer's step (through the fp16 scaler when there is one)."""
        scaler = self.grad_scaler
        params = self._params()
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

    # ---- plumbing -------------------------------------------------------------------------------------

    def _params(self):
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None]

    def _gradients(self):
        """(params, g1 in true units with its L2 term, the scaler's scale); notes ‖∇L‖ for the log."""
        params = self._params()
        g1 = [p.grad for p in params]
        scale = self._grad_scale()
        torch._foreach_div_(g1, scale)
        self.grad_norm = torch.nn.utils.get_total_norm(g1)
        self._add_l2(params, g1, 1.0)
        return params, g1, scale

    def _add_l2(self, params, grads, scale):
        """grads += scale · wd · θ, per parameter group (the paper's L2 term inside the gradient)."""
        index = {id(p): g for p, g in zip(params, grads, strict=True)}
        for group in self.param_groups:
            if group["l2"] == 0:
                continue
            pairs = [(p, index[id(p)]) for p in group["params"] if id(p) in index]
            if pairs:
                decay = [torch.mul(p, group["l2"]) for p, _ in pairs]
                torch._foreach_add_([g for _, g in pairs], torch._foreach_mul(decay, scale))

    def _grad_scale(self) -> torch.Tensor:
        """The fp16 scaler's scale as a device tensor (no host sync), or 1 in the parameters' dtype (a
        float32 one would round a float64 model's mix weights)."""
        first = self.param_groups[0]["params"][0]
        scaler = self.grad_scaler
        if scaler is None or not scaler.is_enabled():
            return torch.ones((), device=first.device, dtype=first.dtype)
        return scaler.scale(torch.ones((), device=first.device))

    def _local_gradients(self):
        """DDP's no_sync() around the first forward and backward: g1 stays on this rank."""
        if isinstance(self.model, DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _rng_state(self):
        """The generators' state before pass 1, for pass 2 to replay (same dropout masks)."""
        if not self.same_dropout_masks or self.model is None:
            return None
        devices = sorted({p.device.index for p in self.model.parameters() if p.device.type == "cuda"})
        return torch.get_rng_state(), devices, [torch.cuda.get_rng_state(d) for d in devices]

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
        modules = [] if self.model is None else self.model.modules()
        buffers = [b for m in modules if isinstance(m, _BatchNorm) and m.track_running_stats
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
