"""Per-trial scores, mean ± std over seeds per configuration, and the paper's choice of (α, r) per scheme.

Only trials whose status is "ok" are averaged; stopped (early, by ASHA), diverged and failed trials are
counted beside the mean, so a configuration that diverges for some seeds can never look better than it is. A trial is scored at one
epoch for both metrics (its last, or the one of its lowest top-1 error), never at two different epochs.
"""

from dataclasses import dataclass

import pandas as pd

from analysis.errors import AnalysisError
from gnp import models, variants
from gnp.config import FIELDS, RUNTIME
from gnp.config import value_text as option_text
from gnp.rows import LOST, RESULT_SCHEMA, STATUSES

PICKS = ("best", "final", "holdout")
METRICS = ("test_top1_err", "test_top5_err")
BLOCK = ["recipe", "model", "dataset", "augmentation"]  # one model's rows in the paper's tables
CORE = ("variant", "alpha", "r")  # within a block, what tells the cells apart


def option_columns(frame: pd.DataFrame) -> list[str]:
    """The configuration fields beyond the block, variant, α and r that vary in `frame` (load_results adds
    a column for each from the rows' `config`; epochs has its own): like another model, each of their
    values makes a block of its own in every table, comparison and figure."""
    fixed = {*BLOCK, *CORE, *RUNTIME, *(set(RESULT_SCHEMA.names) - {"epochs"})}  # lr there is the epoch's
    return [name for name in FIELDS if name not in fixed and name in frame.columns
            and frame[name].map(option_text).nunique() > 1]


def block_of(frame: pd.DataFrame) -> list[str]:
    """The block columns of a frame trial_scores made (or one derived from it): the model's, and the options
    that vary, which trial_scores carries as text."""
    return [*BLOCK, *(name for name in FIELDS if name in frame.columns and name not in {*BLOCK, *CORE, *RUNTIME})]


def cell_of(frame: pd.DataFrame) -> list[str]:
    """One configuration: its block, variant, α and r; its trials differ only by seed."""
    return [*block_of(frame), *CORE]
SCHEMES = tuple(dict.fromkeys(v.label for v in variants.REGISTRY.values()))  # the tables' scheme order
MODELS = tuple(models.REGISTRY)  # the dataset table's model order: ViT-Ti before ViT-S, as the paper's


def trial_scores(df: pd.DataFrame, pick: str = "best") -> pd.DataFrame:
    """One row per trial: identity, status, the scored epoch and its test errors, device-hours, images/s,
    the epochs' wall seconds and the trial's own (trial_wall_s, null where not recorded).

    pick="best" scores a trial at the epoch of its lowest test top-1 error (the earliest on a tie) and takes
    top-5 at that same epoch (the paper's rule: optimistic, chosen on the reported data); pick="final" at its
    last epoch; pick="holdout" at the epoch of its lowest error on the training images it held out
    (--holdout-images), never looking at the test set. `selection_err` is what cells are then chosen by:
    the held-out error under pick="holdout", the test top-1 error otherwise. A trial is failed if any row
    failed, else diverged if any row diverged, else ok.
    """
    if pick not in PICKS:
        raise AnalysisError(f"pick must be one of {', '.join(PICKS)}, got {pick!r}")
    if df.empty:
        raise AnalysisError("no result rows to analyse; load a results folder with load_results(path)")
    held = "holdout_top1_err" in df and df["holdout_top1_err"].notna().any()
    if pick == "holdout" and not held:
        raise AnalysisError("--pick holdout needs trials that held out training images (run them with "
                            "--holdout-images N); these rows have none")
    by = df.groupby("trial_key")
    status = pd.Series(pd.Categorical(df["status"], categories=STATUSES, ordered=True), index=df.index)
    if pick in ("best", "holdout"):
        metric = "test_top1_err" if pick == "best" else "holdout_top1_err"
        scored = df.sort_values(["trial_key", metric, "epoch"], na_position="last")
        scored = scored.drop_duplicates("trial_key", keep="first")
    else:
        scored = df.sort_values(["trial_key", "epoch"]).drop_duplicates("trial_key", keep="last")
    columns = ["epoch", *METRICS, *(["holdout_top1_err"] if held else [])]
    scores = scored.set_index("trial_key")[columns].rename(columns={"epoch": "scored_epoch"})
    scores["selection_err"] = scores["holdout_top1_err" if pick == "holdout" else "test_top1_err"]
    trial_wall = df["trial_wall_s"] if "trial_wall_s" in df else pd.Series(float("nan"), index=df.index)
    options = option_columns(df)
    return (
        df.assign(**{name: df[name].map(option_text) for name in options})
        .groupby("trial_key")[["experiment", "config_key", *BLOCK, *options, *CORE, "seed", "seeds_planned",
                               "workers"]]
        .first()
        .assign(status=status.groupby(df["trial_key"], observed=True).max().astype(str))
        .join(scores)
        .assign(
            device_hours=(df["wall_s"] * df["workers"]).groupby(df["trial_key"]).sum() / 3600,
            images_per_s=by["images_per_s"].mean(),
            epochs_wall_s=by["wall_s"].sum(),
            trial_wall_s=trial_wall.groupby(df["trial_key"]).max(),
        )
        .reset_index()
    )


@dataclass(frozen=True)
class GridCost:
    """What the whole grid took: every trial counts, ok or not."""

    trials: int
    device_hours: float  # sum over trials of their epochs' wall time × workers
    ray_wall_s: float  # sum over trials of trial_wall_s − the epochs' wall time (Ray's start, checkpoints)
    ray_known: int  # trials that recorded trial_wall_s; ray_wall_s covers only these


def grid_cost(trials: pd.DataFrame) -> GridCost:
    known = trials[trials["trial_wall_s"].notna()]
    return GridCost(
        trials=len(trials),
        device_hours=float(trials["device_hours"].sum()),
        ray_wall_s=float((known["trial_wall_s"] - known["epochs_wall_s"]).sum()),
        ray_known=len(known),
    )


def summarize(df: pd.DataFrame, pick: str = "best") -> pd.DataFrame:
    """Mean, sample std (ddof=1) and n of the ok seeds for each (recipe, model, dataset, augmentation,
    variant, alpha, r), with seeds_planned, `incomplete` (fewer ok seeds than planned), the diverged and
    failed counts, and the mean device-hours per trial and images/s of the ok trials."""
    return summarize_trials(trial_scores(df, pick))


def summarize_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """summarize() from trial_scores() already computed."""
    cell = cell_of(trials)
    _check_one_config_per_cell(trials, cell)
    ok = (
        trials[trials["status"] == "ok"]
        .groupby(cell)
        .agg(
            test_top1_err_mean=("test_top1_err", "mean"),
            test_top1_err_std=("test_top1_err", "std"),
            test_top5_err_mean=("test_top5_err", "mean"),
            test_top5_err_std=("test_top5_err", "std"),
            selection_err_mean=("selection_err", "mean"),
            device_hours=("device_hours", "mean"),
            images_per_s=("images_per_s", "mean"),
        )
    )
    cells = trials.groupby(cell)
    counts = (
        cells["status"].value_counts().unstack(fill_value=0).reindex(columns=list(STATUSES), fill_value=0)
    )
    summary = counts.rename(columns={"ok": "n"}).assign(seeds_planned=cells["seeds_planned"].max()).join(ok)
    summary["incomplete"] = summary["n"] < summary["seeds_planned"]
    order = [
        "test_top1_err_mean",
        "test_top1_err_std",
        "test_top5_err_mean",
        "test_top5_err_std",
        "n",
        "seeds_planned",
        "incomplete",
        "diverged",
        "failed",
        "stopped",
        "device_hours",
        "images_per_s",
        "selection_err_mean",
    ]
    return summary[order].reset_index().sort_values([*block_of(trials), "alpha", "r", "variant"], ignore_index=True)


def _check_one_config_per_cell(trials: pd.DataFrame, cell: list[str]) -> None:
    """Two configurations in one cell must not be averaged. Within an experiment the rows' `config` tells
    every option apart (a column each); rows written before it existed, or two experiments pooled, can
    still hold two."""
    configs = trials.groupby(cell)["config_key"].nunique()
    if (configs > 1).any():
        where = configs[configs > 1].index[0]
        named = dict(zip(cell, where, strict=True))
        experiments = sorted(trials.loc[(trials[cell] == pd.Series(named)).all(axis=1), "experiment"].unique())
        raise AnalysisError(
            f"{'/'.join(str(named[k]) for k in BLOCK)} {named['variant']} alpha={named['alpha']:g} "
            f"r={named['r']:g} holds {configs[where]} different configurations whose rows do not say how they "
            f"differ (experiments: {', '.join(experiments)}); point at one experiment's folder, "
            "results/<experiment>, written by this version"
        )


def scheme_of(variant: str, alpha: float) -> str | None:
    """The table scheme a cell belongs to (gnp.variants.scheme_label): Standard (α = 0), SAM (α = 1), GNP
    (0 < α < 1), the other variants by their label, an unknown variant by its own name; None for gnp with
    α outside (0, 1], which the paper reports as diverging."""
    return variants.scheme_label(variant, alpha)


def scheme_rank(scheme: str) -> tuple[int, str]:
    """Sort key: the registry's order of labels, then variants it does not know by name."""
    return (SCHEMES.index(scheme), "") if scheme in SCHEMES else (len(SCHEMES), scheme)


def model_rank(model: str) -> tuple[int, str]:
    """Sort key: gnp.models' registry order, then networks it does not know by name."""
    return (MODELS.index(model), "") if model in MODELS else (len(MODELS), model)


def with_schemes(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary's cells that belong to a scheme, with a `scheme` column."""
    schemes = [scheme_of(v, a) for v, a in zip(summary["variant"], summary["alpha"], strict=True)]
    return summary.assign(scheme=schemes).dropna(subset=["scheme"])


def choose(cells: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """Per `key`, the cell with the lowest mean selection error (the test top-1, as the paper chooses its α
    and r, or the held-out error under pick="holdout"; then top-5, then the smaller α and r); a group none
    of whose cells has an ok seed keeps its first cell."""
    cells = cells.sort_values(["selection_err_mean", "test_top5_err_mean", "alpha", "r"], na_position="last")
    return cells.groupby(key, sort=False).head(1)


def select_schemes(summary: pd.DataFrame) -> pd.DataFrame:
    """For each model block and scheme, the cell with the lowest mean top-1 error (then top-5), as the paper
    chooses; a scheme none of whose cells has an ok seed keeps a row with no α, r or error and the
    stopped, diverged and failed counts of all its cells."""
    cells = with_schemes(summary)
    block = block_of(summary)
    key = [*block, "scheme"]
    best = choose(cells, key).set_index(key)
    none_ok = best.index[best["n"] == 0]
    best.loc[none_ok, ["alpha", "r"]] = float("nan")
    best.loc[none_ok, list(LOST)] = cells.groupby(key)[list(LOST)].sum().loc[none_ok]
    best = best.reset_index()
    columns = [*block, "scheme", *CORE, *summary.columns.drop(cell_of(summary))]
    best = best.assign(rank=best["scheme"].map(scheme_rank)).sort_values([*block, "rank"])
    return best[columns].reset_index(drop=True)
