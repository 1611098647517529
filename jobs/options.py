"""The grid's command line and its trials: every training option is a grid option, the grid is their product.

The options are generated from gnp.config's fields, so an option added there is a grid option here with
no change: `--field-name V1,V2` sweeps it (bool fields also take a bare flag, meaning true; dict fields
take one value, `k=v,k=v`). `--seeds`, `--alpha`, `--r` and `--variant` are the familiar axes. Runtime
fields (data, loader workers, threads, device) change how fast a trial runs, not what it computes: one
value each. Ray-free and torch-free: `--help`, a dry run and the tests never load either.
"""

import argparse
import dataclasses
import itertools
import json
import re

from gnp import variants
from gnp.config import FIELDS, RUNTIME, TrainConfig, base_type, parse_value, ranks_for, trial_key, validate
from gnp.errors import OneLineParser, UserError
from gnp.recipes import RECIPES, get_recipe

AXES = {"seed": "seeds"}  # a field whose grid option has another name
NOT_OPTIONS = ("recipe", "out")  # --recipe picks the defaults (one value); out is each trial's own
SINGLE_RUNTIME = tuple(n for n in RUNTIME if n not in NOT_OPTIONS and n not in AXES)
DEFAULT_AXES = {"seed": [0, 1, 2], "alpha": [0.0, 0.2, 0.3, 1.0], "variant": ["gnp"]}
LOGGERS = ("mlflow", "wandb")


def dest(name: str) -> str:
    """The attribute a field's option parses into (`args.seeds` for the seed)."""
    return AXES.get(name, name)


def flag(name: str) -> str:
    return "--" + dest(name).replace("_", "-")


def swept_fields() -> list[str]:
    """The fields a grid sweeps: every maths field and the seed, in the order the trials run (the last varies
    fastest). The seed comes first: every cell runs its first seed before any cell its second, so a grid
    read while it runs, or stopped early, has every cell; and trials that run at once differ in scheme
    (and so in length), so that one trains while another starts."""
    first = ["seed", "variant", "alpha", "r"]
    return first + [n for n in FIELDS if n not in RUNTIME and n not in NOT_OPTIONS and n not in first]


def numeric_lists() -> tuple[str, ...]:
    return tuple(flag(n) for n in swept_fields() if base_type(n) in (int, float))


def checked(name: str, text: str):
    """One value of a field, parsed and checked against its choices, as an argparse error if bad."""
    try:
        value = parse_value(name, text)
    except UserError as err:
        message = str(err).replace(f"--{name.replace('_', '-')}", flag(name))
        raise argparse.ArgumentTypeError(message) from None
    allowed = variants.sweepable() if name == "variant" else FIELDS[name].metadata["choices"]
    if allowed and value not in allowed:
        raise argparse.ArgumentTypeError(f"{flag(name)} takes {', '.join(allowed)}; got {text!r}")
    return value


def value_list(name: str):
    """argparse type: a comma list of one field's values (a dict field's value is one `k=v,k=v`)."""

    def parse(text: str) -> list:
        items = [text] if base_type(name) is dict else [v.strip() for v in text.split(",") if v.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"{flag(name)} needs at least one value")
        return [checked(name, item) for item in items]

    return parse


def one_value(name: str):
    return lambda text: checked(name, text)


def field_help(name: str) -> str:
    f = FIELDS[name]
    text = f.metadata["help"].replace("%", "%%")
    if name == "variant":
        listed = "; ".join(f"{v}: {variants.REGISTRY[v].summary}" for v in variants.sweepable())
        return f"comma list of {', '.join(variants.sweepable())} (α = 0 runs as standard, gnp at α = 1 as " \
               f"sam; default gnp). {listed}".replace("%", "%%")
    if name in DEFAULT_AXES:
        default = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in DEFAULT_AXES[name])
        return f"{text}; comma list (default {default})"
    if name in RUNTIME:
        return f"{text} (one value; default: the recipe's)"
    if base_type(name) is dict:
        return f"{text}; one value, k=v,k=v (default: the recipe's)"
    if f.metadata["choices"]:
        text += f" [{', '.join(f.metadata['choices'])}]"
    if base_type(name) is bool:
        return f"{text}; true,false sweeps both, a bare flag means true (default: the recipe's)"
    return f"{text}; comma list (default: the recipe's)"


def build_parser() -> argparse.ArgumentParser:
    from jobs import grid  # the module docstring is the --help text

    p = OneLineParser(prog="python -m jobs.grid", description=grid.__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="digits",
                   help=f"the preset the values start from: {', '.join(RECIPES)}")
    axes = p.add_argument_group("the grid (its product; every training option)")
    for name in swept_fields():
        kwargs = dict(type=value_list(name), default=None, help=field_help(name), metavar="V1,V2")
        if base_type(name) is bool:
            kwargs.update(nargs="?", const=[True])
        axes.add_argument(flag(name), dest=dest(name), **kwargs)
    runtime = p.add_argument_group("where and how fast (one value each; not part of a trial's key)")
    for name in SINGLE_RUNTIME:
        runtime.add_argument(flag(name), dest=name, type=one_value(name), default=None, help=field_help(name))
    ray = p.add_argument_group("Ray")
    ray.add_argument("--workers", type=int,
                     help="Train workers (DDP ranks) per trial, all on one node; part of the experiment: the "
                          "global batch splits over them into the per-rank batch (default: the recipe's, "
                          "4 for the paper's recipes, else 2)")
    ray.add_argument("--gpus-per-worker", type=float,
                     help="GPUs per worker; 0 trains on CPU with gloo (default: 1 for the paper's recipes, "
                          "which are for GPUs, else 0)")
    ray.add_argument("--cpus-per-worker", type=float, help="CPUs reserved per worker (default 1)")
    ray.add_argument("--max-concurrent", type=int,
                     help="trials at once (default: as many as the cluster fits)")
    ray.add_argument("--max-failures", type=int, default=3,
                     help="restarts of a trial's worker group, and retries of a trial, each from its last "
                          "checkpoint (default 3)")
    ray.add_argument("--experiment", help="name; the same name resumes or extends it (default: the recipe's name)")
    ray.add_argument("--results", default="results",
                     help="folder or URI for the Parquet tables (default results)")
    ray.add_argument("--storage",
                     help="Ray storage folder or URI (default <results>/_ray); shared by all nodes")
    ray.add_argument("--no-resource-check", action="store_true",
                     help="skip the check that one trial fits a node before anything starts (the trials run "
                          "at once are still no more than the cluster holds)")
    ray.add_argument("--logger", choices=LOGGERS, action="append", default=[],
                     help="also log every trial's metrics to MLflow or Weights & Biases (pip install "
                          "'gnp-ray[tracking]'); TensorBoard files are always written")
    ray.add_argument("--smoke", type=int, nargs="?", const=50, metavar="STEPS",
                     help="run the grid's first trial of each kind of step for one epoch of STEPS steps "
                          "(default 50) on the cluster, under <experiment>-smoke-<time>: seconds per step, "
                          "img/s per device, a go/no-go and the grid's hours at those rates; the grid itself "
                          "does not run")
    ray.add_argument("--dry-run", action="store_true",
                     help="print the trials and the GPU-hours they will take, then exit before Ray starts")
    protocol = p.add_argument_group("the paper's greedy search (--protocol greedy; see jobs/protocol.py)")
    protocol.add_argument("--protocol", choices=("greedy",),
                          help="standard, then r with SAM, then α at the best r, then --seeds of each scheme's "
                               "best, as one resumable command (it sets --alpha, --r and --variant itself)")
    protocol.add_argument("--search-seeds", type=value_list("seed"), default=[0],
                          help="the seeds stages 1-3 search with (default 0)")
    protocol.add_argument("--search-r", type=value_list("r"), default=[0.01, 0.02, 0.05, 0.1, 0.2],
                          help="stage 2's r values with SAM (default the paper's 0.01,0.02,0.05,0.1,0.2)")
    protocol.add_argument("--search-alpha", type=value_list("alpha"),
                          default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                          help="stage 3's α values at the picked r (default the paper's 0.1,...,0.9)")
    protocol.add_argument("--select", choices=("test", "holdout"), default="test",
                          help="what picks r, α and each trial's epoch: test (the paper's rule, optimistic) or "
                               "holdout (training images held out with --holdout-images; default test)")
    protocol.add_argument("--asha", action="store_true",
                          help="stop unpromising trials of stages 2-3 early (Tune's ASHA on the selection error "
                               "per epoch); a stopped trial is labelled and never averaged, and the final stage's "
                               "seeds always run to the end")
    protocol.add_argument("--asha-grace-epochs", type=int,
                          help="epochs every search trial runs before ASHA may stop it (default a tenth of the "
                               "epochs, at least 1)")
    protocol.add_argument("--asha-reduction", type=int, default=3,
                          help="ASHA keeps the best 1/η at each rung (epochs grace·η^k); η (default 3)")
    return p


def negative_lists_joined(argv: list[str]) -> list[str]:
    """`--alpha -0.5,0`: argparse takes "-0.5,0" for an option; join it as `--alpha=-0.5,0`, as meant."""
    lists, out = numeric_lists(), []
    for arg in argv:
        if out and out[-1] in lists and re.fullmatch(r"-[\d.][\d.,eE+-]*", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


@dataclasses.dataclass
class Placement:
    """How many Train workers a trial gets and what each one holds."""

    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    def resources(self) -> dict:
        """What each worker reserves."""
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.use_gpu else {})}


def parse_args(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(negative_lists_joined(argv))
    workers, gpus = placement_defaults(args.recipe)
    args.workers = workers if args.workers is None else args.workers
    args.gpus_per_worker = gpus if args.gpus_per_worker is None else args.gpus_per_worker
    return args


def placement_defaults(recipe: str) -> tuple[int, float]:
    """(workers, GPUs per worker) of a recipe: the paper's recipes fix the per-GPU batch
    (perturbation_batch), so as many workers as it takes, one GPU each; the embedded ones 2 CPU workers."""
    cfg = RECIPES.get(recipe)
    if cfg is None or cfg.perturbation_batch is None:
        return 2, 0.0
    return cfg.batch_size // cfg.perturbation_batch, 1.0


# ---- the grid ------------------------------------------------------------------------------------------


def axes_of(args) -> dict[str, list]:
    """Every swept field's values: as given, else the defaults above, else the recipe's one value."""
    if args.recipe not in RECIPES:
        raise UserError(f"unknown recipe {args.recipe!r}; choose one of: {', '.join(RECIPES)}")
    recipe = RECIPES[args.recipe]
    axes = {}
    for name in swept_fields():
        given = getattr(args, dest(name))
        values = given if given is not None else DEFAULT_AXES.get(name, [getattr(recipe, name)])
        unique = []
        for v in values:
            if v not in unique:
                unique.append(v)
        axes[name] = unique
    for v in axes["variant"]:
        if v not in variants.sweepable():
            raise UserError(f"--variant takes {', '.join(variants.sweepable())} (α = 0 and α = 1 make "
                            f"standard and SAM); got {v!r}")
    return axes


def cell_config(args, cell: dict) -> TrainConfig:
    """One product cell as the configuration it runs: α = 0 is standard (no r, no variant options)."""
    cell = dict(cell)
    cell["variant"] = variants.canonical(cell["variant"], cell["alpha"])
    known = variants.REGISTRY[cell["variant"]].options
    cell["variant_options"] = {k: v for k, v in cell["variant_options"].items() if k in known}
    if cell["variant"] == "standard":
        cell["r"] = 0.0
    runtime = {n: getattr(args, n) for n in SINGLE_RUNTIME}
    cfg = get_recipe(args.recipe, **runtime).replace(**cell)
    validate(cfg)
    return cfg


def grid_configs(args) -> list[TrainConfig]:
    """Every distinct configuration × seed, validated, with the batch split over --workers checked.

    A standard cell ignores r and the variant, so it runs once however many of those the grid sweeps.
    """
    axes = axes_of(args)
    options = {k for values in axes["variant_options"] for k in values}
    known = {k for v in axes["variant"] for k in variants.REGISTRY[v].options}
    if options - known:
        raise UserError(f"--variant-options {sorted(options - known)[0]!r} is an option of none of the "
                        f"variants {', '.join(axes['variant'])}")
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    if len(axes["dataset"]) > 1:
        raise UserError(f"--dataset takes one value per grid, whose data --data gives; got {axes['dataset']}: "
                        "run one grid per dataset")
    configs, seen = [], set()
    for values in itertools.product(*axes.values()):
        cfg = cell_config(args, dict(zip(axes, values, strict=True)))
        key = trial_key(cfg)
        if key not in seen:
            ranks_for(cfg, args.workers)
            seen.add(key)
            configs.append(cfg)
    return configs


def recipe_values(recipe: str) -> dict:
    """The recipe's value of every swept field but the seed: what a grid runs where no option is given."""
    return {name: getattr(RECIPES[recipe], name) for name in swept_fields() if name != "seed"}


def check_run_options(args) -> None:
    """The options that say how a grid runs, checked before anything starts (one line each)."""
    if args.experiment is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.experiment):
        raise UserError(f"--experiment {args.experiment!r} is not a plain name (letters, digits, '.', '_', '-', "
                        "no '/'); it names a folder under --results")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UserError(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
    if args.max_failures < -1:
        raise UserError(f"--max-failures must be >= 0 (or -1: unlimited), got {args.max_failures}")
    if (args.asha or args.asha_grace_epochs is not None) and not args.protocol:
        raise UserError("--asha stops trials early in the greedy protocol's search stages only (never the "
                        "reported seeds); add --protocol greedy, or drop --asha")
    if args.smoke is not None and (args.smoke < 1 or args.protocol):
        raise UserError("--smoke takes a number of steps >= 1, for a plain grid (not --protocol): smoke-test the "
                        "protocol's final grid as its own command")
    if args.asha_grace_epochs is not None and not args.asha:
        raise UserError("--asha-grace-epochs sets ASHA's grace period; add --asha")
    if (args.asha_grace_epochs is not None and args.asha_grace_epochs < 1) or args.asha_reduction < 2:
        raise UserError("--asha-grace-epochs must be >= 1 and --asha-reduction >= 2")
    if (args.cpus_per_worker is not None and args.cpus_per_worker <= 0) or args.gpus_per_worker < 0:
        raise UserError("--cpus-per-worker must be > 0 and --gpus-per-worker >= 0")
    if 0 < args.gpus_per_worker < 1 and args.workers > 1:
        raise UserError(f"--gpus-per-worker {args.gpus_per_worker:g} packs trials onto a GPU and needs --workers 1 "
                        f"(Ray may put two ranks of one trial on one GPU, which NCCL refuses); got --workers "
                        f"{args.workers}: pass --workers 1 (a paper recipe also --perturbation-batch <its global batch>)")


def grid_record(args, configs: list[TrainConfig], dataset: dict) -> dict:
    """What `_grid.json` keeps: the recipe (and its values, which a later version may change), the axes, the
    workers and the data, all part of the experiment."""
    return dict(recipe=args.recipe, recipe_values=recipe_values(args.recipe), workers=args.workers,
                dataset=dataset, axes={k: v for k, v in axes_of(args).items()},
                trials=sorted(trial_key(c) for c in configs))


def recipe_change(before: dict, now: dict) -> str | None:
    """The recipe's values that differ from those the experiment ran, where this command keeps the recipe's.

    A record made before recipes were recorded gives its one-value axes instead, which are the recipe's of
    its day unless that grid overrode them: the message then says it cannot tell the two apart.
    """
    recorded = before.get("recipe_values")
    certain = recorded is not None
    if not certain:
        recorded = {name: values[0] for name, values in before["axes"].items() if len(values) == 1}
    changes = [f"{name} {recorded[name]} → {value}" for name, value in now["recipe_values"].items()
               if name in recorded and json.dumps(recorded[name]) != json.dumps(value)
               and now["axes"].get(name) == [value]]
    if not changes:
        return None
    why = ("changed since this experiment ran" if certain else
           "differs from what this experiment ran (the recipe changed since, or the grid was given those values)")
    return f"recipe {now['recipe']} {why}: {', '.join(changes)}; its trials would be another experiment"


def grid_conflict(before: dict, now: dict) -> str | None:
    """Why `now` may not run under an experiment that ran `before`; None when it is the same or extends it.

    Extending means more values on an axis (seeds, α, r, any option): new trials, the finished ones kept.
    A record of the first release has no workers, dataset or axes: its seeds, α, r and variants are read.
    """
    if before.get("recipe") != now["recipe"]:
        return f"--recipe was {before.get('recipe')}, now {now['recipe']}"
    if "axes" not in before:
        before = {**now, "axes": dict(seed=before["seeds"], alpha=before["alpha"], r=before["r"],
                                      variant=before["variant"].split(",")), "recipe_values": None}
    changed = recipe_change(before, now)
    if changed:
        return changed
    if before.get("workers") != now["workers"]:
        return (f"--workers was {before.get('workers')}, now {now['workers']} (the per-rank batch is part of "
                "the experiment)")
    if before.get("dataset") != now["dataset"]:
        return f"--data holds another dataset than the one it ran on ({describe(before.get('dataset'))})"
    for name, values in now["axes"].items():
        # An option added since that record: it ran at the recipe's value.
        old = before.get("axes", {}).get(name, [getattr(RECIPES[now["recipe"]], name)])
        dropped = [v for v in old if json.dumps(v) not in {json.dumps(x) for x in values}]
        if dropped:
            return (f"{flag(name)} ran {','.join(map(str, old))}; this command drops "
                    f"{','.join(map(str, dropped))} (add values to extend an experiment, never remove them)")
    return None


def with_earlier_axes(before: dict, now: dict) -> dict:
    """`now` with every value an earlier grid of the experiment ran kept on its axis (a protocol's stages
    each sweep a part of one experiment), and its trials."""
    axes = {name: list(before.get("axes", {}).get(name, [])) for name in now["axes"]}
    for name, values in now["axes"].items():
        axes[name] += [v for v in values if json.dumps(v) not in {json.dumps(x) for x in axes[name]}]
    return {**now, "axes": axes, "trials": sorted(set(before.get("trials", [])) | set(now["trials"]))}


def describe(dataset: dict | None) -> str:
    if not dataset:
        return "unknown"
    return (f"{dataset['classes']} classes, {dataset['train_images']} train and {dataset['val_images']} val "
            f"images, fingerprint {dataset['fingerprint']}")
