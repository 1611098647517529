"""The paper's greedy search (§4.1) as one resumable command: `python -m jobs.grid --protocol greedy`.

    1 standard   the standard scheme (α = 0) at the search seeds
    2 r          SAM (α = 1) at each r of --search-r, the search seeds
    3 alpha      GNP at each α of --search-alpha and the r stage 2 picked
    4 final      every --seeds of standard, SAM at the picked r, GNP at the picked (α, r)

Every stage is a grid of the same experiment, so a trial two stages share (a search seed of a picked cell)
runs once. Each pick is the cell of lowest mean selection error over the search seeds (a tie goes to the
smaller value), by the rule
--select names: `test`, the paper's (each trial's best test epoch: the test set picks, so the reported
errors are optimistic), or `holdout` (each trial's best epoch and every cell on training images held out
with --holdout-images; the test set is never looked at). The picks, the rule and the errors they were
made on go to <results>/<experiment>/_protocol.json and are printed. Rerunning the command resumes at the
stage it stopped in: finished stages are read, not rerun. --dry-run lists every stage's trials and the
protocol's device-hours, stages 3 and 4 priced at a placeholder until the earlier stages have picked (their
cost does not depend on which r or α is picked).

--asha stops unpromising trials of stages 2 and 3 early (Tune's ASHA on the selection error per epoch):
such a trial is kept as `stopped`, counted beside every mean and never in one, so a cell all of whose
trials were stopped cannot be picked. The final stage never stops early: a search trial it shares that was
stopped continues from its checkpoint to its last epoch.
"""

import argparse
import copy

from gnp import storage
from gnp.errors import UserError
from jobs import options
from jobs import results as res

SEARCH_R = [0.01, 0.02, 0.05, 0.1, 0.2]
SEARCH_ALPHA = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
FINAL_SEEDS = [0, 1, 2, 3, 4]
RULES = {
    "test": ("best", "lowest mean test top-1 error, each trial at its best test epoch (the paper's rule: the "
                     "test set picks, so the reported errors are optimistic)"),
    "holdout": ("holdout", "lowest mean error on the held-out training images, each trial at its best epoch "
                           "on them (the test set is never looked at)"),
}
FIXED_BY_PROTOCOL = ("alpha", "r", "variant")
STAGES = ("standard", "r", "alpha", "final")


def stages(args, picks: dict) -> list[tuple[str, dict]]:
    """(name, the grid's axes) of each stage; a stage whose pick is not known yet uses a placeholder."""
    search = args.search_seeds
    r = picks.get("r", args.search_r[-1])
    alpha = picks.get("alpha", args.search_alpha[-1])
    return [
        ("standard", dict(seeds=search, alpha=[0.0], r=[r])),
        ("r", dict(seeds=search, alpha=[1.0], r=args.search_r)),
        ("alpha", dict(seeds=search, alpha=args.search_alpha, r=[r])),
        ("final", dict(seeds=args.seeds or FINAL_SEEDS, alpha=[0.0, alpha, 1.0], r=[r])),
    ]


def check(args) -> None:
    given = [options.flag(n) for n in FIXED_BY_PROTOCOL if getattr(args, options.dest(n)) is not None]
    if given:
        raise UserError(f"--protocol greedy sets {', '.join(given)} itself; use --search-r and --search-alpha "
                        "for its grids (--seeds: the final stage's)")
    swept = [options.flag(n) for n, values in options.axes_of(args).items()
             if n not in ("seed", *FIXED_BY_PROTOCOL) and len(values) > 1]
    if swept:
        raise UserError(f"--protocol greedy picks r and α for one configuration; {swept[0]} sweeps several: run "
                        f"the protocol once per value, each under its own --experiment")
    if args.select == "holdout" and not any(args.holdout_images or [0]):
        raise UserError("--select holdout needs held-out training images: add --holdout-images N (e.g. 5000 "
                        "of CIFAR's 50,000)")
    bad = [a for a in args.search_alpha if not 0 < a < 1]
    if bad or any(r <= 0 for r in args.search_r):
        raise UserError("--search-alpha takes values in (0, 1) and --search-r values > 0 (standard and SAM "
                        "are stages of their own)")


def stage_args(args, name: str, axes: dict, experiment: str) -> argparse.Namespace:
    stage = copy.copy(args)
    stage.seeds, stage.alpha, stage.r, stage.variant = axes["seeds"], axes["alpha"], axes["r"], None
    stage.experiment, stage.protocol, stage.stage = experiment, "greedy", name
    return stage


def pick(results: str, experiment: str, configs, rule: str, field: str) -> tuple[float, dict]:
    """The value of `field` (r or alpha) of the stage's cell of lowest mean selection error, and every
    cell's error, from the stage's own trials."""
    import analysis
    from analysis.summary import summarize_trials, trial_scores
    from gnp.rows import LOST

    keys = {res.trial_key(c) for c in configs}
    df = analysis.load_results(f"{results.rstrip('/')}/{experiment}")
    scores = trial_scores(df[df["trial_key"].isin(keys)], RULES[rule][0])
    summary = summarize_trials(scores)
    ok = summary[summary["n"] > 0].sort_values(["selection_err_mean", field])
    if ok.empty:
        raise UserError(f"every trial of stage {field} was stopped, diverged or failed: nothing to pick; see the table above")
    errors = {f"{cell[field]:g}": round(float(cell["selection_err_mean"]), 4) if cell["n"] else
              next(s for s in LOST if cell[s]) for _, cell in summary.iterrows()}
    return float(ok.iloc[0][field]), errors


def print_final(results: str, experiment: str, configs, select: str) -> None:
    """The protocol's result: the final stage's cells alone (the search's single-seed cells left out)."""
    import analysis

    keys = {res.trial_key(c) for c in configs}
    df = analysis.load_results(f"{results.rstrip('/')}/{experiment}")
    print(f"== the protocol's result ({', '.join(RULES[select][1].split(' (')[:1])}):", flush=True)
    print(analysis.format_table(df[df["trial_key"].isin(keys)], pick=RULES[select][0]), flush=True)


def run(args, run_grid) -> int:
    """The stages in order through `run_grid` (jobs.grid.run), each pick recorded before the next starts."""
    check(args)
    experiment = args.experiment or args.recipe
    results = args.results
    fs, path = storage.resolve(results)
    path = f"{path.rstrip('/')}/{experiment}/_protocol.json"
    record = res.read_json(fs, path) or {}
    if record and record.get("select") != args.select:
        raise UserError(f"experiment {experiment!r} picked by --select {record['select']}; rerun with it, or "
                        "choose a new --experiment")
    record = {"select": args.select, "rule": RULES[args.select][1], "picks": record.get("picks", {})}
    from jobs.grid import asha_options

    search = stage_args(args, "r", dict(stages(args, {}))["r"], experiment)
    asha = asha_options(search, options.grid_configs(search))  # a wrong grace: refused before stage 1 runs
    picks = {name: entry["value"] for name, entry in record["picks"].items()}
    to_go = {}  # device-hours by trial key: a trial two stages share is counted once
    for number, name in enumerate(STAGES, start=1):
        axes = dict(stages(args, picks))[name]  # with the picks made so far
        stage = stage_args(args, name, axes, experiment)
        print(f"== stage {number} {name}: seeds {axes['seeds']}, alpha {axes['alpha']}, r {axes['r']}", flush=True)
        if args.dry_run:
            run_grid(stage)
            to_go.update(stage.planned_hours)
            continue
        configs = options.grid_configs(stage)
        early = args.asha and name in ("r", "alpha")
        done = all(res.finished_trial(results, experiment, res.trial_key(c), c.epochs, stopped_is_done=early)
                   for c in configs)
        if not done:
            code = run_grid(stage)
            if code:
                return code
        if name in ("r", "alpha"):
            value, errors = pick(results, experiment, configs, args.select, name)
            picks[name] = value
            record["picks"][name] = {"value": value, "errors": errors, "seeds": axes["seeds"]}
            if early:
                record["picks"][name]["asha"] = {k: asha[k] for k in ("metric", "grace_period", "reduction_factor")}
            res.write_json(fs, path, record)
            print(f"stage {name} picked {name} = {value:g} by {RULES[args.select][1]}: {errors}", flush=True)
    if not args.dry_run:
        print_final(results, experiment, configs, args.select)
    if args.dry_run:
        print(f"the protocol: {len(to_go)} trials, {sum(to_go.values()):.3g} device-hours to go (a trial two "
              "stages share counted once; stages 3-4 at a placeholder r and α until stages 2-3 have picked: the "
              "same cost, bar divergence" + ("; --asha: stages 2-3 priced as if no trial stopped early" if args.asha
                                             else "") + ")")
    return 0
