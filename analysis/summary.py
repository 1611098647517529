"""Per-trial scores, mean ± std over seeds per configuration, and the paper's choice of (α, r) per scheme.

Only trials whose status is "ok" are averaged; diverged and failed trials are counted beside the mean, so a
configuration that diverges for some seeds can never look better than it is. A trial is scored at one
epoch for both metrics (its last, or the one of its lowest top-1 error), never at two different epochs.
"""

from dataclasses import dataclass

import pandas as pd

from analysis.errors import AnalysisError
from analysis.schema import STATUSES
from gnp import variants

PICKS = ("best", "final")
METRICS = ("test_top1_err", "test_top5_err")
BLOCK = ["recipe", "model", "dataset", "augmentation"]  # one model's rows in the paper's tables
CELL = [*BLOCK, "variant", "alpha", "r"]  # one configuration; its trials differ only by seed
SCHEMES = tuple(dict.fromkeys(v.label for v in variants.REGISTRY.values()))  # the tables' scheme order


def trial_scores(df: pd.DataFrame, pick: str = "best") -> pd.DataFrame:
    """One row per trial: identity, status, the scored epoch and its test errors, device-hours, images/s,
    the epochs' wall seconds and the trial's own (trial_wall_s, null where not recorded).

    pick="best" scores a trial at the epoch of its lowest test top-1 error (the earliest on a tie) and takes
    top-5 at that same epoch; pick="final" at its last epoch. A trial is failed if any row failed, else
    diverged if any row diverged, else ok.
    """
    if pick not in PICKS:
        raise AnalysisError(f"pick must be 'best' or 'final', got {pick!r}")
    if df.empty:
        raise AnalysisError("no result rows to analyse; load a results folder with load_results(path)")
    by = df.groupby("trial_key")
    status = pd.Series(pd.Categorical(df["status"], categories=STATUSES, ordered=True), index=df.index)
    if pick == "best":
        scored = df.sort_values(["trial_key", "test_top1_err", "epoch"], na_position="last")
        scored = scored.drop_duplicates("trial_key", keep="first")
    else:
        scored = df.sort_values(["trial_key", "epoch"]).drop_duplicates("trial_key", keep="last")
    scores = scored.set_index("trial_key")[["epoch", *METRICS]].rename(columns={"epoch": "scored_epoch"})
    trial_wall = df["trial_wall_s"] if "trial_wall_s" in df else pd.Series(float("nan"), index=df.index)
    return (
        by[["experiment", "config_key", *CELL, "seed", "seeds_planned", "workers"]]
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
    _check_one_config_per_cell(trials)
    ok = (
        trials[trials["status"] == "ok"]
        .groupby(CELL)
        .agg(
            test_top1_err_mean=("test_top1_err", "mean"),
            test_top1_err_std=("test_top1_err", "std"),
            test_top5_err_mean=("test_top5_err", "mean"),
            test_top5_err_std=("test_top5_err", "std"),
            device_hours=("device_hours", "mean"),
            images_per_s=("images_per_s", "mean"),
        )
    )
    cells = trials.groupby(CELL)
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
        "device_hours",
        "images_per_s",
    ]
    return summary[order].reset_index().sort_values([*BLOCK, "alpha", "r", "variant"], ignore_index=True)


def _check_one_config_per_cell(trials: pd.DataFrame) -> None:
    """Two configurations in one cell (say, two experiments with other epochs) must not be averaged."""
    configs = trials.groupby(CELL)["config_key"].nunique()
    if (configs > 1).any():
        cell = configs[configs > 1].index[0]
        experiments = sorted(trials.groupby(CELL).get_group(cell)["experiment"].unique())
        raise AnalysisError(
            f"{'/'.join(map(str, cell[:4]))} {cell[4]} alpha={cell[5]:g} r={cell[6]:g} holds "
            f"{configs[cell]} different configurations (experiments: {', '.join(experiments)}); "
            "point at one experiment's folder, results/<experiment>"
        )


def scheme_of(variant: str, alpha: float) -> str | None:
    """The table scheme a cell belongs to (gnp.variants.scheme_label): Standard (α = 0), SAM (α = 1), GNP
    (0 < α < 1), the other variants by their label, an unknown variant by its own name; None for gnp with
    α outside (0, 1], which the paper reports as diverging."""
    return variants.scheme_label(variant, alpha)


def scheme_rank(scheme: str) -> tuple[int, str]:
    """Sort key: the registry's order of labels, then variants it does not know by name."""
    return (SCHEMES.index(scheme), "") if scheme in SCHEMES else (len(SCHEMES), scheme)


def with_schemes(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary's cells that belong to a scheme, with a `scheme` column."""
    schemes = [scheme_of(v, a) for v, a in zip(summary["variant"], summary["alpha"], strict=True)]
    return summary.assign(scheme=schemes).dropna(subset=["scheme"])


def choose(cells: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """Per `key`, the cell with the lowest mean top-1 error (then top-5, then the smaller α and r), as the
    paper chooses its α and r; a group none of whose cells has an ok seed keeps its first cell."""
    cells = cells.sort_values(["test_top1_err_mean", "test_top5_err_mean", "alpha", "r"], na_position="last")
    return cells.groupby(key, sort=False).head(1)


def select_schemes(summary: pd.DataFrame) -> pd.DataFrame:
    """For each model block and scheme, the cell with the lowest mean top-1 error (then top-5), as the paper
    chooses; a scheme none of whose cells has an ok seed keeps a row with no α, r or error and the
    diverged and failed counts of all its cells."""
    cells = with_schemes(summary)
    key = [*BLOCK, "scheme"]
    best = choose(cells, key).set_index(key)
    none_ok = best.index[best["n"] == 0]
    best.loc[none_ok, ["alpha", "r"]] = float("nan")
    best.loc[none_ok, ["diverged", "failed"]] = cells.groupby(key)[["diverged", "failed"]].sum().loc[none_ok]
    best = best.reset_index()
    columns = [*BLOCK, "scheme", "variant", "alpha", "r", *summary.columns.drop(CELL)]
    best = best.assign(rank=best["scheme"].map(scheme_rank)).sort_values([*BLOCK, "rank"])
    return best[columns].reset_index(drop=True)
