"""The per-worker training loop: one process, torchrun, or a Ray Train worker (jobs/ wraps it).

Each epoch: train (GNP steps), evaluate on every validation image once, write a checkpoint folder atomically
on rank 0, and hand one metrics row to `report`. A NaN/inf loss ends the run with status "diverged": that is
a result, not a crash. An fp16 step that the GradScaler skips for overflow is routine: it is counted in
the row (`skipped_steps`), never taken for divergence.

Randomness: every rank starts from the same seed (the same initial weights), then draws from its own
stream (dropout masks differ per rank, as the official code's per-device keys); augmentation is a pure
function of (seed, epoch, sample index) (gnp.data). On CUDA nothing here forces a host sync per step: the
epoch's sums stay on the device and are read once per epoch (and a one-scalar NaN check every 50 steps).
"""

import contextlib
import dataclasses
import gc
import inspect
import itertools
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from gnp import checkpoint, datasets
from gnp.config import TrainConfig, ranks_for
from gnp.data import Loaders, dataset_loaders, derived_seed, to_device
from gnp.errors import UserError
from gnp.models import build_model
from gnp.optim import GNP

DIVERGENCE_CHECK_EVERY = 50  # steps between the (one-scalar) all-reduces that look for a NaN loss
MIN_LOSS_SCALE = 2.0**-16  # an fp16 loss scale below this means every step overflows: diverged

Report = Callable[[dict, str | None], None]  # (metrics row, the epoch's checkpoint folder on rank 0 or None)


def close_distributed() -> None:
    """End the process group that `distributed_context` started (torchrun), once the run's DDP model is gone.

    Left to the interpreter's exit, the group's gloo threads can be torn down while still joinable, which
    aborts a rank (SIGABRT, "terminate called without an active exception") after a run that succeeded.
    """
    if dist.is_initialized():
        gc.collect()  # the Run (its DDP reducer holds the group) sits in reference cycles
        dist.destroy_process_group()


def distributed_context():
    """(rank, world, local_rank); starts the process group under torchrun if nobody did yet."""
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def resolve_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu")
    if cfg.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """amp=auto is bf16 on CUDA and fp32 (None) on a CPU."""
    amp = ("bf16" if device.type == "cuda" else "none") if cfg.amp == "auto" else cfg.amp
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)


def lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    """Per step, as the official code's optax.warmup_cosine_decay_schedule: linear from 0 (the first step's
    learning rate is 0) to the peak over the warm-up, then cosine decay to zero over the remaining steps."""
    total, warmup = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch

    def factor(step):
        if step < warmup:
            return step / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


def base_optimizer(cfg: TrainConfig) -> tuple[type[torch.optim.Optimizer], dict]:
    """(class, its settings) of the optimizer the regularizer wraps. Weight decay is the wrapper's: an L2 term
    inside the gradients, or handed to this optimizer (decoupled for AdamW, on every parameter as optax.adamw)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW, dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    return torch.optim.SGD, dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def regularizes(cfg: TrainConfig, epoch: int, step: int, total_steps: int) -> bool:
    """Whether global step `step` (0-based, in epoch `epoch`) is a two-pass step: the "zero" GR warm-up
    and the amortized schedules (every k-th step; with probability p(step), one draw from (seed, step),
    the same on every rank and after any restart)."""
    if cfg.gr_warmup == "zero" and epoch < cfg.gr_warmup_epochs:
        return False
    if step % cfg.regularize_every:
        return False
    p = cfg.regularize_prob * {"constant": 1.0, "increasing": step / total_steps,
                               "decreasing": 1 - step / total_steps}[cfg.regularize_schedule]
    return p >= 1 or random.Random(f"{cfg.seed}:{step}").random() < p


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """Each rank's own stream after the common initialization (dropout masks differ per rank)."""
    return derived_seed(seed, rank, 1)


def prepare_output(out: str) -> Path:
    path = Path(out).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()  # a per-process probe: ranks share the folder
    except OSError as err:
        raise UserError(f"output folder {path} is not writable ({err.strerror}); choose another --out") from None
    return path


# ---- per-batch sums: device tensors only (tested on the meta device, which refuses a CPU tensor) ---------


def step_sums(loss, logits, targets, grad_norm, skipped) -> torch.Tensor:
    """[loss·n, wrong, ‖∇L‖ (0 if not finite), 1 if that norm is finite, 1 if skipped] of one step. Soft
    (mixed) targets count as their largest label."""
    finite = torch.isfinite(grad_norm)
    labels = targets if targets.dim() == 1 else targets.argmax(1)
    return torch.stack([
        loss.detach().double() * len(labels), (logits.argmax(1) != labels).sum().double(),
        torch.where(finite, grad_norm, 0).double(), finite.double(),
        skipped.double() if skipped is not None else torch.zeros_like(grad_norm, dtype=torch.float64),
    ])


def eval_counts(logits, targets, k: int) -> torch.Tensor:
    """[top-1 hits, top-k hits] of one validation batch."""
    hit = logits.topk(k, dim=1).indices == targets[:, None]
    return torch.stack([hit[:, 0].sum(), hit.any(1).sum()]).double()


def _fp32_head(head: torch.nn.Linear, inputs, output):
    """Forward hook: in eval mode, the head's output recomputed in float32 from its (autocast) input."""
    if head.training or output.dtype == torch.float32:
        return None
    with torch.autocast(output.device.type, enabled=False):
        return F.linear(inputs[0].float(), head.weight, head.bias)  # the weights are float32 already


def score_heads_in_fp32(model: torch.nn.Module, num_classes: int) -> None:
    """Evaluation scores float32 logits: a bf16 head output keeps 8 significant bits, so two classes within
    ~0.4% of each other tie and topk picks by index. Every classifier head (a Linear with num_classes
    outputs) recomputes its output in float32 in eval mode, a negligible cost; training keeps autocast's."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.out_features == num_classes:
            module.register_forward_hook(_fp32_head)


class Run:
    """Everything one worker holds for one training run; `train()` below drives it epoch by epoch."""

    def __init__(self, cfg: TrainConfig, device: torch.device | None = None, *, loaders: Loaders | None = None,
                 ddp: bool | None = None):
        """`loaders` stands in for the dataset's (a benchmark's batches already on the device); `ddp` wraps
        the model in DDP on one rank too (default: from two ranks on), so that one GPU runs every rank's path."""
        self.cfg = cfg
        self.rank, self.world, local_rank = distributed_context()
        ranks_for(cfg, self.world)
        self.device = device or resolve_device(cfg, local_rank)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        cuda = self.device.type == "cuda"
        if cuda:  # also when the caller (Ray Train) chose the device: NCCL's object collectives use it
            torch.cuda.set_device(self.device)
        torch.backends.cudnn.benchmark = cuda
        seed_everything(cfg.seed)  # the same initial weights on every rank
        if loaders is None:
            spec = datasets.get(cfg.dataset)
            loaders = dataset_loaders(
                spec, spec.root(cfg.data, cfg.recipe), image_size=cfg.image_size, augmentation=cfg.augmentation,
                batch_size=cfg.batch_size // self.world, workers=cfg.loader_workers, rank=self.rank,
                world=self.world, seed=cfg.seed, device=self.device, decode=cfg.decode,
                holdout_images=cfg.holdout_images,
            )
        self.train_loader, self.val_loader, self.num_classes, self.holdout_loader = loaders
        self.memory_format = torch.channels_last if cfg.channels_last and cuda else torch.contiguous_format
        self.model = build_model(cfg.model, self.num_classes, cfg.image_size, drop_path=cfg.drop_path,
                                 patch_size=cfg.patch_size).to(self.device, memory_format=self.memory_format)
        torch.manual_seed(rank_seed(cfg.seed, self.rank))
        score_heads_in_fp32(self.model, self.num_classes)
        # DDP first, then compile (PyTorch's order): dynamo splits the graph at DDP's buckets, so the
        # all-reduce of each bucket overlaps the rest of the compiled backward. Evaluation runs the plain
        # module (no DDP collectives: ranks may hold different counts), compiled too.
        wrap = self.world > 1 if ddp is None else ddp
        self.ddp = data_parallel(self.model, self.device) if wrap else self.model
        self.forward = torch.compile(self.ddp) if cfg.compile else self.ddp
        self.evaluator = torch.compile(self.model) if cfg.compile else self.model
        self.amp_dtype = autocast_dtype(cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        base, settings = base_optimizer(cfg)
        self.optimizer = GNP(
            self.ddp.parameters(), base, alpha=cfg.alpha, r=cfg.r, variant=cfg.variant,
            mix=cfg.mix, weight_decay=cfg.weight_decay, weight_decay_mode=cfg.weight_decay_mode,
            model=self.ddp, sync_perturbation=cfg.sync_perturbation, same_dropout_masks=cfg.same_dropout_masks,
            clip_grad_norm=cfg.clip_grad_norm, grad_scaler=self.scaler if self.scaler.is_enabled() else None,
            variant_options=cfg.variant_options, **settings,
        )
        self.steps_per_epoch = min(len(self.train_loader), cfg.max_steps_per_epoch or len(self.train_loader))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer.base_optimizer, lr_lambda(cfg, self.steps_per_epoch)
        )
        self.epoch, self.rows = 0, []

    # ---- one epoch -------------------------------------------------------------------------------------

    def regularization_ramp(self, step_in_epoch: int):
        """GR warm-up: r (or α) grows linearly from 0 over the first gr_warmup_epochs."""
        cfg = self.cfg
        if cfg.gr_warmup_epochs <= 0 or cfg.gr_warmup == "zero":
            return
        ramp = min(1.0, (self.epoch + step_in_epoch / self.steps_per_epoch) / cfg.gr_warmup_epochs)
        if cfg.gr_warmup == "r":
            self.optimizer.r = cfg.r * ramp
        else:
            self.optimizer.alpha = cfg.alpha * ramp

    def train_one_epoch(self):
        """Returns the epoch's sums over all ranks (see `step_sums`, then images, steps and two-pass steps)
        and its seconds."""
        self.ddp.train()
        self.train_loader.set_epoch(self.epoch)
        sums = torch.zeros(5, dtype=torch.float64, device=self.device)
        seen = steps = regularized = 0
        total = self.cfg.epochs * self.steps_per_epoch
        start = beat = time.perf_counter()
        batches = self.train_loader  # run to its end, unless max_steps_per_epoch cuts the epoch short
        if self.steps_per_epoch < len(self.train_loader):
            batches = itertools.islice(self.train_loader, self.steps_per_epoch)
        for step, (images, targets) in enumerate(batches):
            images = to_device(images, self.device, self.memory_format)
            targets = targets.to(self.device, non_blocking=True)
            self.regularization_ramp(step)
            regularize = regularizes(self.cfg, self.epoch, self.epoch * self.steps_per_epoch + step, total)
            first = {}

            def closure(create_graph=False, images=images, targets=targets, first=first):
                with self.autocast():
                    logits = self.forward(images)
                    loss = F.cross_entropy(logits, targets, label_smoothing=self.cfg.label_smoothing)
                first.setdefault("logits", logits.detach())  # train error from the first pass, at θ
                self.scaler.scale(loss).backward(create_graph=create_graph)
                return loss

            loss = self.optimizer.step(closure, regularize=regularize)
            self.scheduler.step()
            sums += step_sums(loss, first["logits"], targets, self.optimizer.grad_norm, self.optimizer.skipped)
            regularized += self.optimizer.regularized
            seen, steps = seen + len(targets), steps + 1
            if (step + 1) % DIVERGENCE_CHECK_EVERY == 0 and not math.isfinite(self.all_sum(sums[:1]).item()):
                break
            if self.rank == 0 and self.cfg.heartbeat_s and time.perf_counter() - beat >= self.cfg.heartbeat_s:
                beat = time.perf_counter()
                self.heartbeat(step + 1, sums[0].item() / seen, seen * self.world / (beat - start))
        counts = torch.tensor([seen, steps, regularized], dtype=torch.float64, device=self.device)
        totals = self.all_sum(torch.cat([sums, counts]))
        return totals.tolist(), time.perf_counter() - start

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def heartbeat(self, step: int, loss: float, images_per_s: float):
        """One progress line within a long epoch (the loss read is the one host sync it costs)."""
        per_step = self.cfg.batch_size / images_per_s
        left_epoch = (self.steps_per_epoch - step) * per_step
        left_run = left_epoch + (self.cfg.epochs - self.epoch - 1) * self.steps_per_epoch * per_step
        print(f"epoch {self.epoch + 1}/{self.cfg.epochs} step {step}/{self.steps_per_epoch}  loss {loss:.4f}  "
              f"{images_per_s:.0f} img/s  epoch ETA {left_epoch / 60:.1f} min  run ETA {left_run / 3600:.2f} h",
              file=sys.stderr, flush=True)

    @torch.no_grad()
    def evaluate(self, loader=None):
        """Top-1 and top-5 error in percent over every image of `loader` (default: the test set) exactly once
        (ranks summed), with the BatchNorm statistics averaged over the ranks, so every rank evaluates the
        checkpoint's model, scored from float32 logits (`score_heads_in_fp32`). Training then goes on from
        each rank's own statistics, as in the official code (pmean at eval only)."""
        self.model.eval()  # the plain module: no DDP collectives, ranks may hold different counts
        hits = torch.zeros(2, dtype=torch.float64, device=self.device)
        seen = 0
        k = min(5, self.num_classes)
        with swapped_buffers(self.model, averaged_buffers(self.model, self.world)):
            for images, targets in self.val_loader if loader is None else loader:  # an empty part stays empty
                images = to_device(images, self.device, self.memory_format)
                targets = targets.to(self.device, non_blocking=True)
                with self.autocast():
                    logits = self.evaluator(images)
                hits += eval_counts(logits, targets, k)
                seen += len(targets)
        top1, top5, n = self.all_sum(torch.cat([hits, hits.new_tensor([seen])])).tolist()
        return 100 * (1 - top1 / n), 100 * (1 - top5 / n), int(n)

    def all_sum(self, tensor):
        if self.world > 1:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
        return tensor

    def run_epoch(self) -> dict:
        started_at = time.time()
        (loss_sum, wrong, norm_sum, norm_steps, skipped, seen, steps, regularized), seconds = self.train_one_epoch()
        train_loss = loss_sum / max(seen, 1)
        collapsed = self.scaler.is_enabled() and self.scaler.get_scale() < MIN_LOSS_SCALE
        diverged = not math.isfinite(train_loss) or collapsed
        top1, top5, n_val = (float("nan"), float("nan"), 0) if diverged else self.evaluate()
        holdout, n_holdout = None, 0  # the held-out images' error (null without them): what selections read
        if self.holdout_loader is not None and not diverged:
            holdout, _, n_holdout = self.evaluate(self.holdout_loader)
        self.epoch += 1
        cfg = self.cfg
        return dict(
            epoch=self.epoch, epochs=cfg.epochs, variant=cfg.variant, alpha=cfg.alpha, r=cfg.r, seed=cfg.seed,
            train_loss=train_loss, train_err=100 * wrong / max(seen, 1), test_top1_err=top1, test_top5_err=top5,
            val_images=n_val, holdout_top1_err=holdout, holdout_images=n_holdout, grad_norm=norm_sum / norm_steps if norm_steps else float("nan"),
            skipped_steps=int(skipped), regularized_steps=int(regularized), lr=self.scheduler.get_last_lr()[0],
            images_per_s=seen / seconds, wall_s=seconds, workers=self.world, device=device_name(self.device),
            status="diverged" if diverged else "ok", started_at=started_at, ended_at=time.time(),
        )

    # ---- checkpoints -----------------------------------------------------------------------------------

    def state(self) -> dict:
        """The checkpoint: the model with the rank-averaged statistics it is evaluated with, and every rank's
        own statistics and generators, so that a resume on as many ranks is exact everywhere."""
        own = {name: b.cpu() for name, b in floating_buffers(self.model).items()}
        rank_states = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(rank_states, (checkpoint.rng_state(self.device), own))
        else:
            rank_states = [(checkpoint.rng_state(self.device), own)]
        return dict(
            model={**self.model.state_dict(), **averaged_buffers(self.model, self.world)},
            rank_buffers=[buffers for _, buffers in rank_states], optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(), epoch=self.epoch,
            rng=[rng for rng, _ in rank_states], rows=self.rows, config=dataclasses.asdict(self.cfg),
        )

    def load_state(self, state: dict):
        self.model.load_state_dict(state["model"])
        if len(state.get("rank_buffers", ())) == self.world:  # else: every rank from the averaged ones
            set_buffers(self.model, state["rank_buffers"][self.rank])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.rows = state["epoch"], list(state["rows"])
        if len(state["rng"]) == self.world:
            checkpoint.set_rng_state(state["rng"][self.rank], self.device)
        else:  # resumed on another number of workers: deterministic, if not the same stream
            seed_everything(rank_seed(self.cfg.seed * 1000 + self.epoch, self.rank))


def data_parallel(module: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    """DDP that leaves each rank its own BatchNorm running statistics, as each device keeps its own in the
    official code (DDP's default broadcasts rank 0's to every rank at each forward); they are averaged to
    evaluate and to checkpoint (`averaged_buffers`)."""
    # torch >= 2.14 names it forward_sync_buffers (and deprecates broadcast_buffers); 2.11 has only the old name
    own = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DistributedDataParallel)
           .parameters else {"broadcast_buffers": False})
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None, **own)


def floating_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The running statistics (BatchNorm's mean and variance; not its integer step count), by name."""
    return {name: b for name, b in model.named_buffers() if b.is_floating_point()}


def averaged_buffers(model: torch.nn.Module, world: int) -> dict[str, torch.Tensor]:
    """A copy of the floating buffers averaged over the ranks (one all-reduce), as the official code's pmean."""
    own = floating_buffers(model)
    if not own:
        return {}
    flat = torch.cat([b.reshape(-1) for b in own.values()])  # a new tensor: the model's stay as they are
    if world > 1:
        dist.all_reduce(flat)
        flat /= world
    parts = flat.split([b.numel() for b in own.values()])
    return {name: part.view_as(b) for (name, b), part in zip(own.items(), parts, strict=True)}


@torch.no_grad()
def set_buffers(model: torch.nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Copy `values` into the model's buffers of those names, in place (the DDP reducer keeps its views)."""
    buffers = dict(model.named_buffers())
    for name, value in values.items():
        buffers[name].copy_(value)


@contextlib.contextmanager
def swapped_buffers(model: torch.nn.Module, values: dict[str, torch.Tensor]):
    """The model's buffers hold `values` inside the block and their own values again after it."""
    kept = {name: b.clone() for name, b in floating_buffers(model).items()}
    set_buffers(model, values)
    try:
        yield
    finally:
        set_buffers(model, kept)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def train(cfg: TrainConfig, *, resume: dict | None = None, report: Report | None = None,
          device: torch.device | None = None, hand_over_checkpoints: bool = False) -> list[dict]:
    """Train one run on this worker; returns the metrics rows of every epoch (resumed ones included).

    `resume` is a loaded checkpoint (see gnp.checkpoint.load). After every epoch rank 0 writes the epoch's
    folder <out>/epoch_NNNN (checkpoint.pt; rows.json, every row so far, readable without torch) and links
    <out>/checkpoint.pt and <out>/rows.json to it (gnp.checkpoint.save_epoch); then every rank calls
    `report(row, folder or None)`. The folder is deleted once report returns, unless `hand_over_checkpoints`:
    then report owns it (Ray Train uploads it in the background while the next epoch trains, then deletes it).
    """
    out = prepare_output(cfg.out)
    run = Run(cfg, device)
    if resume is not None:
        run.load_state(resume)
    report = report or (lambda row, folder: None)
    if run.rank == 0 and not hand_over_checkpoints:
        checkpoint.remove_epoch_folders(out)
    while run.epoch < cfg.epochs and not (run.rows and run.rows[-1]["status"] == "diverged"):
        row = run.run_epoch()
        run.rows.append(row)
        state = run.state()
        folder = checkpoint.save_epoch(state, out) if run.rank == 0 else None
        report(row, str(folder) if folder else None)
        if folder and not hand_over_checkpoints:
            shutil.rmtree(folder)
    return run.rows
