"""`--smoke [STEPS]`: a few steps of the grid on the cluster it will run on, before its hours are spent.

The grid's first trial of each kind of step (one pass, and two passes or double backprop where the grid has
them) trains one epoch of STEPS steps (default 50) and evaluates, with the grid's recipe, workers, data,
process group and storage, under its own experiment (<experiment>-smoke-<time>, so a rerun measures
again). Then it prints each trial's seconds per step and images/s per device (end to end: the loader, the
first steps' warm-up and the evaluation's share of the epoch included, so a lower bound), a go/no-go (every
trial trained, evaluated, checkpointed and wrote its rows), and the whole grid's plan at the rates it
measured: its rows are results, which --dry-run prices from.
"""

import sys
import time

from gnp import variants
from jobs import results as res


def smoke_configs(configs: list, steps: int) -> list:
    """The first trial of each kind of step, one epoch of `steps` steps."""
    first = {}
    for cfg in configs:
        first.setdefault(variants.REGISTRY[cfg.variant].step_at(cfg.alpha), cfg)
    return [cfg.replace(epochs=1, max_steps_per_epoch=steps) for cfg in first.values()]


def experiment_name(experiment: str) -> str:
    return f"{experiment}-smoke-{time.strftime('%Y%m%d-%H%M%S')}"


def report(results: str, experiment: str, configs: list) -> bool:
    """Each smoke trial's figures and the go/no-go; True for go."""
    import analysis

    df = analysis.load_results(f"{results.rstrip('/')}/{experiment}")
    go = True
    print(f"== smoke run {experiment}:", flush=True)
    for cfg in configs:
        rows = df[df["trial_key"] == res.trial_key(cfg)]
        if rows.empty:
            print(f"  {cfg.variant} α={cfg.alpha:g}: no result (the trial did not end)", flush=True)
            go = False
            continue
        row = rows.iloc[-1]
        ok = row["status"] == "ok"
        go = go and ok
        rate = row["images_per_s"]
        print(f"  {cfg.variant:<8} α={cfg.alpha:<4g} {row['status']:<8} {cfg.batch_size / rate:.3f} s/step, "
              f"{rate / row['workers']:,.0f} img/s per device on {row['workers']} × {row['device']}, "
              f"top-1 {row['test_top1_err']:.1f} % after {cfg.max_steps_per_epoch} steps, epoch "
              f"{row['wall_s']:.0f} s", flush=True)
    verdict = ("GO: every smoke trial trained, evaluated, checkpointed and wrote its rows" if go else
               "NO-GO: a smoke trial did not end ok; see its log above before submitting the grid")
    print(verdict, file=sys.stdout if go else sys.stderr, flush=True)
    return go
