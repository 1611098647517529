"""One training run from the command line: one process, or every rank under torchrun.

    python -m gnp.train                                   # embedded digits, α = 0 (standard), ~1 min CPU
    python -m gnp.train --alpha 0.8 --r 0.05              # GNP on the digits
    python -m gnp.train --recipe imagenet-resnet50 --data /data/imagenet --alpha 0.3 --out runs/r50-gnp
    torchrun --nproc-per-node 8 -m gnp.train --recipe imagenet-resnet50 --data /data/imagenet --alpha 0.3
    python -m gnp.train --out runs/r50-gnp --resume ...   # continue from runs/r50-gnp/checkpoint.pt
    python -m gnp.train --recipe imagenet-vgg16bn --print-recipe   # every value the run would use

Every option overrides one field of the recipe (`--recipe NAME --help` shows that recipe's values). Rows
go to <out>/metrics.jsonl, one per epoch. Torch is imported only once a run starts, so --help is instant.
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from gnp import datasets, variants
from gnp.config import FIELDS, base_type, differences, parse_value
from gnp.errors import OneLineParser, UserError, one_line
from gnp.recipes import RECIPES, get_recipe


def typed(name: str):
    def convert(text: str):
        try:
            return parse_value(name, text)
        except UserError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return convert


def build_parser(recipe: str = "digits") -> argparse.ArgumentParser:
    """One option per config field, its help ending with `recipe`'s value."""
    base = RECIPES.get(recipe, RECIPES["digits"]).replace(out=f"runs/{recipe}")
    p = OneLineParser(prog="python -m gnp.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="digits", help=f"one of: {', '.join(RECIPES)} (default: digits)")
    for name, f in FIELDS.items():
        if name == "recipe":
            continue
        value = getattr(base, name)
        help_text = f"{f.metadata['help']} [{base.recipe}: {'none' if value is None else value}]"
        flag = "--" + name.replace("_", "-")
        if base_type(name) is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            p.add_argument(flag, type=typed(name), default=None, metavar=name.upper(), help=help_text)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt")
    p.add_argument("--print-recipe", action="store_true",
                   help="print every value of the run (the recipe with these options) as JSON and exit")
    return p


def parse(argv) -> argparse.Namespace:
    """Parse with the help of the recipe named on the command line."""
    recipe = argparse.ArgumentParser(add_help=False)
    recipe.add_argument("--recipe", default="digits")
    known, _ = recipe.parse_known_args(argv)
    return build_parser(known.recipe).parse_args(argv)


def config_from_args(args: argparse.Namespace):
    """The run's configuration, named as a grid names it: α = 0 is standard (r 0), gnp at α = 1 is sam."""
    overrides = {k: v for k, v in vars(args).items() if k not in ("recipe", "resume", "print_recipe")}
    overrides["out"] = args.out or f"runs/{args.recipe}"
    if overrides.get("alpha") is not None and overrides.get("variant") is None:
        overrides["variant"] = "gnp"
    cfg = get_recipe(args.recipe, **overrides)
    variant = variants.canonical(cfg.variant, cfg.alpha)
    return cfg.replace(variant=variant, r=0.0 if variant == "standard" else cfg.r)


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        cfg = config_from_args(args)
        if args.print_recipe:
            print(json.dumps(dataclasses.asdict(cfg), indent=1))
            return 0
        datasets.get(cfg.dataset).root(cfg.data, cfg.recipe)  # the data is checked before --out is made
        from gnp import checkpoint
        from gnp.loop import close_distributed, prepare_output, train

        existing = Path(cfg.out).expanduser() / checkpoint.FILENAME
        if existing.exists() and not args.resume:
            raise UserError(f"{existing} already exists; pass --resume to continue it or choose another --out")
        if args.resume and not existing.exists():
            raise UserError(f"--resume: {existing} does not exist, so there is nothing to resume; drop --resume "
                            "to start this run afresh, or give the --out of the run to continue")
        resume = checkpoint.load(existing) if args.resume else None
        out = prepare_output(cfg.out)
        if resume is not None:
            changed = differences(resume["config"], cfg)
            if changed:
                name = changed[0]
                raise UserError(f"{out} was trained with {name}={resume['config'].get(name)!r}, this command "
                                f"says {getattr(cfg, name)!r}; resume with the same values or choose another --out")
            if resume["epoch"] >= cfg.epochs or (resume["rows"] and resume["rows"][-1]["status"] == "diverged"):
                print(f"{out} has finished ({resume['epoch']} of {cfg.epochs} epochs, "
                      f"{resume['rows'][-1]['status']}); nothing to resume", file=sys.stderr)
                return 0 if resume["rows"][-1]["status"] == "ok" else 3
            print(f"resuming {out} at epoch {resume['epoch']} of {cfg.epochs}", file=sys.stderr)
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
                  f"top-5 err {row['test_top5_err']:5.2f}%  ‖∇L‖ {row['grad_norm']:.3f}  "
                  f"{row['images_per_s']:7.0f} img/s  {row['wall_s']:5.1f}s  {row['status']}", flush=True)

        try:
            rows = train(cfg, resume=resume, report=report)
        finally:
            close_distributed()  # this command started the process group under torchrun; it ends it
    except UserError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0 if rows[-1]["status"] == "ok" else 3


if __name__ == "__main__":
    sys.exit(main())
