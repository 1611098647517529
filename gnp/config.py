"""The one configuration every entry point shares, its validation, its trial key and its command-line form.

Each field says here what it means (`help`), which values it takes (`choices`) and whether it changes what
a run computes or only where and how fast it runs (`runtime`). The command lines of `gnp.train` and
`jobs.grid` are generated from these fields, so a new option is one field here, and every option that
changes the maths is a grid option.

Trial keys (`config_key`): a hash of the fields that change the maths. The fields of the first release
(`KEY_V1`) are always hashed; a field added since is hashed only when it differs from its default. So
adding an option with a default leaves every existing key, and so every existing experiment, unchanged.
Torch-free, like gnp.variants: the grid driver and analysis read it without loading torch.
"""

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field

from gnp import datasets, models, variants
from gnp.errors import UserError


def option(default, help: str, *, choices=None, runtime: bool = False):
    """A config field with its help text; `runtime` fields are not part of the trial key."""
    meta = dict(help=help, choices=choices, runtime=runtime)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    recipe: str = option("digits", "the named preset these values start from")
    model: str = option("smallcnn", "the network: the official code's (" + ", ".join(
        n for n, m in models.REGISTRY.items() if m.source == "official") + "), torchvision's (" + ", ".join(
        n for n, m in models.REGISTRY.items() if m.source == "torchvision") + ") or smallcnn",
        choices=tuple(models.REGISTRY))
    dataset: str = option("digits", "; ".join(f"{d.name}: {d.summary}" for d in datasets.REGISTRY.values()),
                          choices=tuple(datasets.REGISTRY))
    data: str | None = option(None, "the dataset's root (default: the embedded copy, for datasets that have one)",
                              runtime=True)
    image_size: int = option(32, "training crop; evaluation resizes to size·8/7 and center-crops")
    epochs: int = option(15, "training epochs (cosine schedule over all of them)")
    batch_size: int = option(64, "global batch, split evenly over the ranks")
    lr: float = option(0.05, "learning rate for the global batch (not scaled with the ranks)")
    momentum: float = option(0.9, "SGD momentum (0 with --optimizer adamw)")
    nesterov: bool = option(True, "Nesterov momentum (false with --optimizer adamw)")
    weight_decay: float = option(5e-4, "weight decay coefficient")
    weight_decay_mode: str = option("l2", "l2: a term of the loss, inside g1, g2 and the perturbation (the "
                                    "paper); base: decoupled, in the base optimizer", choices=("l2", "base"))
    warmup_epochs: float = option(0.0, "linear learning-rate warm-up before the cosine decay")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy")
    variant: str = option("gnp", "the update: " + ", ".join(variants.REGISTRY), choices=tuple(variants.REGISTRY))
    alpha: float = option(0.0, "α = λ/r: 0 is standard training, 1 is SAM")
    r: float = option(0.05, "perturbation radius r")
    mix: str = option("paper", "paper: g = (1−α)·g1 + α·g2; official: (1−α)·g1/‖g1‖ + α·g2 (the JAX code's "
                      "default)", choices=("paper", "official"))
    sync_perturbation: bool = option(False, "perturb along the all-reduced g1 instead of each rank's own "
                                     "(a second all-reduce per step)")
    clip_grad_norm: float | None = option(None, "clip the final gradient to this global norm (none: no clip)")
    gr_warmup_epochs: float = option(0.0, "gradient-regularization warm-up epochs (see gr_warmup)")
    gr_warmup: str = option("r", "during the GR warm-up: r or alpha ramps linearly from 0, or zero: standard "
                            "steps", choices=("r", "alpha", "zero"))
    seed: int = option(0, "initial weights, data order and augmentation", runtime=True)
    amp: str = option("none", "none (fp32), bf16 (autocast), fp16 (autocast + GradScaler), or auto: bf16 on "
                      "CUDA and fp32 on CPU", choices=("none", "bf16", "fp16", "auto"))
    channels_last: bool = option(False, "channels_last memory format on CUDA (CPU runs keep the default)")
    device: str = option("auto", "auto, cpu or cuda", choices=("auto", "cpu", "cuda"), runtime=True)
    loader_workers: int = option(2, "DataLoader processes per rank", runtime=True)
    threads: int = option(0, "torch threads per rank (0: torch's default)", runtime=True)
    augmentation: str = option("crop", "the dataset's named preset. Image folders: " + "; ".join(
        f"{name}: {text}" for name, text in datasets.FOLDER_AUGMENTATIONS.items()) + ". CIFAR: " + "; ".join(
        f"{name}: {text}" for name, text in datasets.CIFAR_AUGMENTATIONS.items()))
    out: str = option("runs/default", "folder for this run's checkpoint and metrics", runtime=True)
    heartbeat_s: float = option(60.0, "seconds between rank 0's progress lines within an epoch (0: none)",
                                runtime=True)
    # ---- hashed into the key only when not at their default (so the keys of runs without them stay) -----
    variant_options: dict = option({}, "the variant's own settings as name=value (asam: eta)")
    perturbation_batch: int | None = option(
        None, "images each rank perturbs on and BatchNorm normalizes over (= batch_size / ranks); a grid "
        "checks it against --workers (none: whatever the ranks give)")
    same_dropout_masks: bool = option(True, "both passes of a step see the same dropout masks (pass 2 "
                                      "scores the perturbation on the network pass 1 saw)")
    regularize_every: int = option(1, "a two-pass step every k-th step, standard steps between (amortized)")
    regularize_prob: float = option(1.0, "probability of a two-pass step, else standard (hybrid training); "
                                    "one draw per step, the same on every rank")
    regularize_schedule: str = option("constant", "how that probability moves over training: constant, "
                                      "increasing (0 → p) or decreasing (p → 0)",
                                      choices=("constant", "increasing", "decreasing"))
    compile: bool = option(False, "torch.compile the model")
    decode: str = option("loader", "where training and validation JPEGs are decoded: loader (the DataLoader "
                         "processes, PIL) or device (the loader processes read the files and draw the crops; "
                         "the training device decodes, crops and flips: nvJPEG on a GPU)",
                         choices=("loader", "device"))

    optimizer: str = option("sgd", "the base optimizer the regularizer wraps: sgd (momentum, nesterov) or adamw "
                            "(beta1, beta2, eps; weight decay decoupled with --weight-decay-mode base, as optax.adamw)",
                            choices=("sgd", "adamw"))
    beta1: float = option(0.9, "AdamW's β1")
    beta2: float = option(0.999, "AdamW's β2")
    eps: float = option(1e-8, "AdamW's ε")
    drop_path: float = option(0.0, "drop-path (stochastic depth) rate of the ViTs")
    holdout_images: int = option(0, "training images held out to select on (r, α, the best epoch) instead of the "
                                 "test set: a fixed draw, the same for every seed and trial (CIFAR datasets; "
                                 "0: none)")
    patch_size: int | None = option(None, "the ViTs' patch side in pixels (none: the official code's, 4 for "
                                    "10 or 100 classes, 16 for 1,000)")
    max_steps_per_epoch: int | None = option(None, "end each epoch's training after this many steps (a smoke "
                                             "run; none: every batch); evaluation stays whole")

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
DEFAULTS = TrainConfig()
KEY_V1 = (
    "recipe", "model", "dataset", "image_size", "epochs", "batch_size", "lr", "momentum", "nesterov",
    "weight_decay", "weight_decay_mode", "warmup_epochs", "label_smoothing", "variant", "alpha", "r", "mix",
    "sync_perturbation", "clip_grad_norm", "gr_warmup_epochs", "gr_warmup", "amp", "channels_last",
    "augmentation",
)
RUNTIME = tuple(name for name, f in FIELDS.items() if f.metadata["runtime"])


def key_fields(cfg: TrainConfig) -> dict:
    """What a trial key hashes: every first-release field, and each later one that is not at its default."""
    values = dataclasses.asdict(cfg)
    return {name: value for name, value in values.items() if name not in RUNTIME
            and (name in KEY_V1 or value != getattr(DEFAULTS, name))}


def maths_fields(cfg: TrainConfig) -> dict:
    """Every field that changes what a run computes (the seed aside), as a result row's `config` records it."""
    return {name: value for name, value in dataclasses.asdict(cfg).items() if name not in RUNTIME}


def varying_fields(configs: list[TrainConfig], leave_out=("variant", "alpha", "r")) -> list[str]:
    """The maths fields whose value differs among `configs` (besides those left out), in field order: what
    tells a grid's cells apart in a listing beside variant, α and r."""
    values = [maths_fields(c) for c in configs]
    return [name for name in values[0] if name not in leave_out
            and len({json.dumps(v[name], sort_keys=True) for v in values}) > 1] if values else []


def value_text(value) -> str:
    """A field's value as listings and tables show it: none, true/false, 0.05, {"eta": 0.01}."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return format(value, "g") if isinstance(value, float) else str(value)


def config_key(cfg: TrainConfig) -> str:
    return hashlib.sha256(json.dumps(key_fields(cfg), sort_keys=True).encode()).hexdigest()[:12]


def trial_key(cfg: TrainConfig) -> str:
    return f"{config_key(cfg)}-s{cfg.seed}"


def differences(old: dict, new: TrainConfig) -> list[str]:
    """The fields that change the maths and differ between a stored config (a dict) and `new`."""
    before = key_fields(TrainConfig(**{k: v for k, v in old.items() if k in FIELDS}))
    after = key_fields(new)
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))


# ---- command lines: a field's text form -------------------------------------------------------------------


def base_type(name: str):
    """The field's value type (int, float, str, bool or dict), None stripped from `X | None`."""
    hint = typing.get_type_hints(TrainConfig)[name]
    if isinstance(hint, types.UnionType):
        return next(t for t in typing.get_args(hint) if t is not type(None))
    return hint


def parse_value(name: str, text: str):
    """One value of field `name` from the command line ("none" for an optional field)."""
    kind, hint = base_type(name), typing.get_type_hints(TrainConfig)[name]
    if text.lower() == "none" and isinstance(hint, types.UnionType):
        return None
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError
            return text.lower() in ("true", "1", "yes", "on")
        if kind is dict:
            pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
            return {k.strip(): float(v) for k, v in pairs}
        return kind(text)
    except ValueError:
        raise UserError(f"--{name.replace('_', '-')} takes {kind.__name__} values, got {text!r}") from None


# ---- validation ------------------------------------------------------------------------------------------


def validate(cfg: TrainConfig) -> None:
    """Reject bad values with one line that names the field and the fix."""
    for name in ("lr", "r", "alpha", "weight_decay", "label_smoothing", "warmup_epochs", "gr_warmup_epochs",
                 "regularize_prob", "momentum", "beta1", "beta2", "eps", "drop_path"):
        value = getattr(cfg, name)
        if not math.isfinite(value):
            raise UserError(f"{name} must be a finite number, got {value}")
        if name != "alpha" and value < 0:
            raise UserError(f"{name} must be >= 0, got {value}")
    if cfg.lr <= 0:
        raise UserError(f"lr must be > 0, got {cfg.lr}")
    variant = variants.get(cfg.variant)
    if not variant.allows(cfg.alpha):
        hint = "; use --variant gnp for other alphas" if cfg.variant == "sam" else ""
        raise UserError(f"variant {cfg.variant!r} takes {variant.alpha_rule()}, got alpha={cfg.alpha}{hint}")
    if variant.passes == 2 and cfg.alpha != 0 and cfg.r <= 0:
        raise UserError(f"r must be > 0 for variant {cfg.variant!r} with alpha={cfg.alpha}, got {cfg.r}")
    if cfg.mix == "official" and not variant.official_mix:
        raise UserError(f"mix='official' is defined for gnp (and standard), not for {cfg.variant!r}")
    variants.check_options(cfg.variant, cfg.variant_options)
    check_base_optimizer(cfg)
    spec = datasets.get(cfg.dataset)
    spec.check_augmentation(cfg.augmentation)
    if spec.layout == "cifar" and cfg.image_size != 32 and cfg.augmentation not in datasets.RESIZING_AUGMENTATIONS:
        raise UserError(f"dataset {cfg.dataset!r} has 32×32 images and augmentation {cfg.augmentation!r} keeps "
                        f"them so; use image_size 32 (or a resizing augmentation: "
                        f"{', '.join(datasets.RESIZING_AUGMENTATIONS)}), got {cfg.image_size}")
    if spec.layout == "cifar" and cfg.decode != "loader":
        raise UserError(f"decode={cfg.decode!r} is for JPEG folders; {cfg.dataset!r} is held as tensors on the "
                        "training device already")
    if cfg.holdout_images < 0 or (cfg.holdout_images and spec.layout != "cifar"):
        raise UserError(f"holdout_images is a count of CIFAR training images (>= 0), got {cfg.holdout_images} "
                        f"for dataset {cfg.dataset!r}")
    for name in ("batch_size", "epochs", "regularize_every", "image_size"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.regularize_prob > 1:
        raise UserError(f"regularize_prob is a probability (0 to 1), got {cfg.regularize_prob}")
    if cfg.max_steps_per_epoch is not None and cfg.max_steps_per_epoch < 1:
        raise UserError(f"max_steps_per_epoch must be >= 1 or none, got {cfg.max_steps_per_epoch}")
    if cfg.perturbation_batch is not None and cfg.perturbation_batch < 1:
        raise UserError(f"perturbation_batch must be >= 1 or none, got {cfg.perturbation_batch}")
    if cfg.clip_grad_norm is not None and not (math.isfinite(cfg.clip_grad_norm) and cfg.clip_grad_norm > 0):
        raise UserError(f"clip_grad_norm must be a positive number or none, got {cfg.clip_grad_norm}")
    if cfg.threads < 0:
        raise UserError(f"threads must be >= 0 (0: torch's default), got {cfg.threads}")
    if cfg.loader_workers < 0:
        raise UserError(f"loader_workers must be >= 0 (0: load in the training process), got {cfg.loader_workers}")
    for name, f in FIELDS.items():
        allowed = f.metadata["choices"]
        if allowed and getattr(cfg, name) not in allowed:
            raise UserError(f"{name} must be one of {', '.join(allowed)}; got {getattr(cfg, name)!r}")
    check_model_options(cfg, spec)


def check_base_optimizer(cfg: TrainConfig) -> None:
    """Each base optimizer's own options: refused, not ignored, under the other one."""
    if cfg.optimizer == "adamw" and (cfg.momentum != 0 or cfg.nesterov):
        raise UserError("momentum and nesterov are SGD's options; with --optimizer adamw pass --momentum 0 "
                        "--nesterov false (AdamW's own are --beta1, --beta2, --eps)")
    adam = [name for name in ("beta1", "beta2", "eps") if getattr(cfg, name) != getattr(DEFAULTS, name)]
    if cfg.optimizer == "sgd" and adam:
        raise UserError(f"{', '.join(adam)} {'is' if len(adam) == 1 else 'are'} AdamW's; with --optimizer sgd "
                        "leave them at their defaults (or pass --optimizer adamw)")
    if not (cfg.beta1 < 1 and cfg.beta2 < 1 and cfg.eps > 0):
        raise UserError(f"AdamW needs 0 <= beta1, beta2 < 1 and eps > 0; got beta1={cfg.beta1}, "
                        f"beta2={cfg.beta2}, eps={cfg.eps}")


def check_model_options(cfg: TrainConfig, spec) -> None:
    """drop_path and patch_size only where the network has them, a patch that tiles the image."""
    model = models.get(cfg.model)
    takers = ", ".join(n for n, m in models.REGISTRY.items() if "drop_path" in m.options)
    for name, unset in (("drop_path", 0.0), ("patch_size", None)):
        if getattr(cfg, name) != unset and name not in model.options:
            raise UserError(f"model {cfg.model!r} has no {name.replace('_', ' ')}; --{name.replace('_', '-')} "
                            f"is for {takers}")
    if cfg.drop_path >= 1:
        raise UserError(f"drop_path is a probability below 1, got {cfg.drop_path}")
    if "patch_size" in model.options:  # a folder dataset's default patch waits for its classes (gnp.nets.vit)
        patch = cfg.patch_size or (4 if spec.layout == "cifar" else None)
        if patch is not None and (patch < 1 or cfg.image_size % patch):
            raise UserError(f"patch size {patch} does not tile image_size {cfg.image_size}; use a patch size "
                            f"that divides it (--patch-size)")


def ranks_for(cfg: TrainConfig, workers: int) -> None:
    """The global batch must split over `workers`, into the per-rank batch the recipe perturbs on; a
    single-process variant (db) runs on one."""
    if workers > 1 and not variants.get(cfg.variant).ddp:
        raise UserError(f"variant {cfg.variant!r} is the single-process reference; run it with 1 worker")
    if cfg.batch_size % workers:
        raise UserError(f"batch size {cfg.batch_size} does not split over {workers} workers; "
                        f"use a multiple of {workers}")
    per_rank = cfg.batch_size // workers
    if cfg.perturbation_batch is not None and per_rank != cfg.perturbation_batch:
        fit = cfg.batch_size // cfg.perturbation_batch
        raise UserError(
            f"recipe {cfg.recipe!r} perturbs on {cfg.perturbation_batch} images per rank (batch "
            f"{cfg.batch_size} over {fit} ranks); {workers} workers would give {per_rank}: use {fit} workers, "
            f"or pass --perturbation-batch {per_rank} (another experiment)"
        )
