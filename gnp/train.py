"""The per-worker training loop: one process, torchrun, or a Ray Train worker (jobs/ wraps it).

    python -m gnp.train                                   # embedded digits, GNP α=0 (standard), ~1 min CPU
    python -m gnp.train --alpha 0.8 --r 0.05              # GNP on the digits
    python -m gnp.train --recipe imagenet-resnet50 --data /data/imagenet --alpha 0.3 --amp bf16 \\
        --channels-last --out runs/r50-gnp                # one ImageNet run (torchrun --nproc-per-node 8 ...)
    python -m gnp.train --out runs/r50-gnp --resume ...   # continue from runs/r50-gnp/checkpoint.pt

Each epoch: train (GNP steps), evaluate on every validation image once, write a checkpoint atomically on
rank 0, and hand one metrics row to `report` (Ray forwards it; alone it goes to <out>/metrics.jsonl).
A NaN/inf loss ends the run with status "diverged": that is a result, not a crash.
"""

import argparse
import dataclasses
import json
import math
import os
import random
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

from gnp import checkpoint
from gnp.config import TrainConfig
from gnp.data import build_loaders, check_layout, ensure_digits
from gnp.errors import UserError
from gnp.models import build_model
from gnp.optim import GNP
from gnp.recipes import RECIPES, get_recipe

DIVERGENCE_CHECK_EVERY = 50  # steps between the (one-scalar) all-reduces that look for a NaN loss

Report = Callable[[dict, str | None], None]  # (metrics row, folder holding checkpoint.pt on rank 0 or None)


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
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    """Linear warm-up, then cosine decay to zero, per step."""
    total, warmup = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def data_root(cfg: TrainConfig) -> Path:
    if cfg.data is None:
        if cfg.dataset != "digits":
            raise UserError(f"recipe {cfg.recipe!r} needs --data: the folder that holds train/ and val/")
        return ensure_digits()
    return check_layout(cfg.data)


def prepare_output(out: str) -> Path:
    path = Path(out).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()  # a per-process probe: ranks share the folder
    except OSError as err:
        raise UserError(f"output folder {path} is not writable ({err.strerror}); choose another --out") from None
    return path


class Run:
    """Everything one worker holds for one training run; `train()` below drives it epoch by epoch."""

    def __init__(self, cfg: TrainConfig, device: torch.device | None = None):
        self.cfg = cfg
        self.rank, self.world, local_rank = distributed_context()
        self.device = device or resolve_device(cfg, local_rank)
        if cfg.batch_size % self.world:
            raise UserError(f"batch size {cfg.batch_size} does not split over {self.world} workers; "
                            f"use a multiple of {self.world}")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)  # the same initial weights on every rank
        self.train_loader, self.val_loader, num_classes = build_loaders(
            data_root(cfg), image_size=cfg.image_size, augmentation=cfg.augmentation,
            batch_size=cfg.batch_size // self.world, workers=cfg.loader_workers, rank=self.rank,
            world=self.world, seed=cfg.seed, pin_memory=self.device.type == "cuda",
        )
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = build_model(cfg.model, num_classes).to(self.device, memory_format=self.memory_format)
        self.ddp = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.optimizer = GNP(
            self.ddp.parameters(), torch.optim.SGD, alpha=cfg.alpha, r=cfg.r, variant=cfg.variant,
            mix=cfg.mix, weight_decay=cfg.weight_decay, weight_decay_mode=cfg.weight_decay_mode,
            model=self.ddp, sync_perturbation=cfg.sync_perturbation, clip_grad_norm=cfg.clip_grad_norm,
            grad_scaler=self.scaler if cfg.amp == "fp16" else None,
            lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
        )
        self.steps_per_epoch = len(self.train_loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer.base_optimizer, lr_lambda(cfg, self.steps_per_epoch)
        )
        self.epoch, self.rows = 0, []
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)

    # ---- one epoch -------------------------------------------------------------------------------------

    def regularization_ramp(self, step_in_epoch: int):
        """GR warm-up: r (or α) grows linearly from 0 over the first gr_warmup_epochs."""
        cfg = self.cfg
        if cfg.gr_warmup_epochs <= 0:
            return
        ramp = min(1.0, (self.epoch + step_in_epoch / self.steps_per_epoch) / cfg.gr_warmup_epochs)
        if cfg.gr_warmup == "r":
            self.optimizer.r = cfg.r * ramp
        else:
            self.optimizer.alpha = cfg.alpha * ramp

    def train_one_epoch(self):
        """Returns (loss_sum, wrong, seen, grad_norm_sum, steps) summed over all ranks, and the seconds."""
        self.ddp.train()
        self.train_loader.sampler.set_epoch(self.epoch)
        stats = torch.zeros(5, dtype=torch.float64, device=self.device)
        start = time.perf_counter()
        for step, (images, targets) in enumerate(self.train_loader):
            images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
            targets = targets.to(self.device, non_blocking=True)
            self.regularization_ramp(step)
            first = {}

            def closure(create_graph=False, images=images, targets=targets, first=first):
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    logits = self.ddp(images)
                    loss = F.cross_entropy(logits, targets, label_smoothing=self.cfg.label_smoothing)
                first.setdefault("logits", logits.detach())  # train error from the first pass, at θ
                self.scaler.scale(loss).backward(create_graph=create_graph)
                return loss

            loss = self.optimizer.step(closure)
            self.scheduler.step()
            wrong = (first["logits"].argmax(1) != targets).sum()
            stats += torch.stack([loss.detach().double() * len(targets), wrong.double(),
                                  torch.tensor(len(targets), dtype=torch.float64, device=self.device),
                                  self.optimizer.grad_norm.double(), torch.ones((), device=self.device).double()])
            if (step + 1) % DIVERGENCE_CHECK_EVERY == 0 and not math.isfinite(self.all_sum(stats[:1]).item()):
                break
        stats = self.all_sum(stats)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return stats.tolist(), time.perf_counter() - start

    @torch.no_grad()
    def evaluate(self):
        """Top-1 and top-5 error in percent over every validation image exactly once (ranks summed)."""
        self.model.eval()  # the plain module: no DDP collectives, ranks may hold different counts
        counts = torch.zeros(3, dtype=torch.float64, device=self.device)
        k = min(5, self.model_classes())
        for images, targets in self.val_loader:
            images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
            targets = targets.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                logits = self.model(images)
            topk = logits.topk(k, dim=1).indices
            hit = topk == targets[:, None]
            counts += torch.stack([hit[:, 0].sum(), hit.any(1).sum(), torch.tensor(len(targets))]).double()
        top1, top5, n = self.all_sum(counts).tolist()
        return 100 * (1 - top1 / n), 100 * (1 - top5 / n), int(n)

    def model_classes(self) -> int:
        return len(self.val_loader.dataset.classes)

    def all_sum(self, tensor):
        if self.world > 1:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
        return tensor

    def run_epoch(self) -> dict:
        (loss_sum, wrong, seen, norm_sum, steps), seconds = self.train_one_epoch()
        train_loss = loss_sum / max(seen, 1)
        diverged = not math.isfinite(train_loss) or not math.isfinite(norm_sum)
        top1, top5, n_val = (float("nan"), float("nan"), 0) if diverged else self.evaluate()
        self.epoch += 1
        return dict(
            epoch=self.epoch, epochs=self.cfg.epochs, train_loss=train_loss, train_err=100 * wrong / max(seen, 1),
            test_top1_err=top1, test_top5_err=top5, val_images=n_val, grad_norm=norm_sum / max(steps, 1),
            lr=self.scheduler.get_last_lr()[0], images_per_s=seen / seconds, wall_s=seconds,
            workers=self.world, device=device_name(self.device), status="diverged" if diverged else "ok",
        )

    # ---- checkpoints -----------------------------------------------------------------------------------

    def state(self) -> dict:
        rng = checkpoint.rng_state(self.device)
        rngs = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(rngs, rng)  # every rank's own generators, so resume is exact everywhere
        else:
            rngs = [rng]
        return dict(
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(), epoch=self.epoch,
            rng=rngs, rows=self.rows, config=dataclasses.asdict(self.cfg),
        )

    def load_state(self, state: dict):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.rows = state["epoch"], list(state["rows"])
        if len(state["rng"]) == self.world:
            checkpoint.set_rng_state(state["rng"][self.rank], self.device)
        else:  # resumed on another number of workers: deterministic, if not the same stream
            seed_everything(self.cfg.seed * 1000 + self.epoch * 10 + self.rank)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def train(cfg: TrainConfig, *, resume: dict | None = None, report: Report | None = None,
          device: torch.device | None = None) -> list[dict]:
    """Train one run on this worker; returns the metrics rows of every epoch (resumed ones included).

    `resume` is a loaded checkpoint (see gnp.checkpoint.load). Rank 0 writes <out>/checkpoint.pt and
    <out>/rows.json (every row so far, readable without torch) after every epoch, then every rank calls
    `report(row, folder or None)`.
    """
    out = prepare_output(cfg.out)
    run = Run(cfg, device)
    if resume is not None:
        run.load_state(resume)
    report = report or (lambda row, folder: None)
    while run.epoch < cfg.epochs and not (run.rows and run.rows[-1]["status"] == "diverged"):
        row = run.run_epoch()
        run.rows.append(row)
        state = run.state()
        if run.rank == 0:
            checkpoint.save(state, out / checkpoint.FILENAME)
            checkpoint.save_rows(run.rows, out / checkpoint.ROWS_FILENAME)
        report(row, str(out) if run.rank == 0 else None)
    return run.rows


# ---- command line --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gnp.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="digits", help=f"one of: {', '.join(RECIPES)} (default: digits)")
    p.add_argument("--data", help="dataset root holding train/<class>/ and val/<class>/ (default: embedded digits)")
    p.add_argument("--model", help="override the recipe's model")
    p.add_argument("--variant", help="standard, gnp (default), sam, fgr, bgr or db")
    p.add_argument("--alpha", type=float, help="α = λ/r: 0 standard, 1 SAM (recipe default)")
    p.add_argument("--r", type=float, help="perturbation radius r (default 0.05)")
    p.add_argument("--mix", help="paper (default) or official: (1-α)·g1/‖g1‖ + α·g2")
    p.add_argument("--seed", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch, split over workers")
    p.add_argument("--lr", type=float, help="learning rate for the global batch")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-epochs", type=float, help="linear LR warm-up before the cosine decay")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--clip-grad-norm", type=float, help="clip the final gradient to this global norm")
    p.add_argument("--gr-warmup-epochs", type=float, help="ramp r (or α, see --gr-warmup) over these epochs")
    p.add_argument("--gr-warmup", help="r (default) or alpha")
    p.add_argument("--sync-perturbation", action="store_true", default=None,
                   help="perturb along the all-reduced g1 (a second all-reduce per step)")
    p.add_argument("--amp", help="none (default), bf16 or fp16")
    p.add_argument("--channels-last", action="store_true", default=None)
    p.add_argument("--device", help="auto (default), cpu or cuda")
    p.add_argument("--loader-workers", type=int, help="DataLoader worker processes per training worker")
    p.add_argument("--threads", type=int, help="torch threads per worker (0: torch's default)")
    p.add_argument("--out", help="folder for checkpoint.pt and metrics.jsonl (default runs/<recipe>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {k: v for k, v in vars(args).items() if k not in ("recipe", "resume")}
    overrides["out"] = args.out or f"runs/{args.recipe}"
    if overrides.get("alpha") is not None and overrides.get("variant") is None:
        overrides["variant"] = "gnp"
    return get_recipe(args.recipe, **overrides)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        out = prepare_output(cfg.out)
        existing = out / checkpoint.FILENAME
        if existing.exists() and not args.resume:
            raise UserError(f"{existing} already exists; pass --resume to continue it or choose another --out")
        resume = checkpoint.load(existing) if args.resume and existing.exists() else None
        metrics = out / "metrics.jsonl"
        print(f"training {cfg.recipe}: {cfg.model}, variant={cfg.variant} α={cfg.alpha} r={cfg.r}, "
              f"data={cfg.data or 'embedded digits'}, out={out}", file=sys.stderr)

        def report(row, folder):
            if folder is None:
                return
            with metrics.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"epoch {row['epoch']:3d}/{row['epochs']}  loss {row['train_loss']:.4f}  "
                  f"train err {row['train_err']:5.2f}%  top-1 err {row['test_top1_err']:5.2f}%  "
                  f"top-5 err {row['test_top5_err']:5.2f}%  ‖g1‖ {row['grad_norm']:.3f}  "
                  f"{row['images_per_s']:7.0f} img/s  {row['wall_s']:5.1f}s  {row['status']}", flush=True)

        rows = train(cfg, resume=resume, report=report)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0 if rows[-1]["status"] == "ok" else 3


if __name__ == "__main__":
    sys.exit(main())
