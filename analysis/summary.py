"""Per-trial scores, mean ± std over seeds per configuration, and the paper's choice of (α, r) per scheme.

Only trials whose status is "ok" are averaged; diverged and failed trials are counted beside the mean, so a
configuration that diverges for some seeds can never look better than it is.
"""

import pandas as pd

from analysis.errors import AnalysisError
from analysis.schema import STATUSES

PICKS = ("best", "final")
METRICS = ("test_top1_err", "test_top5_err")
BLOCK = ["recipe", "model", "dataset", "augmentation"]  # one model's rows in the paper's tables
CELL = [*BLOCK, "variant", "alpha", "r"]  # one configuration; its trials differ only by seed
SCHEMES = ("Standard", "SAM", "GNP", "FGR", "BGR", "DB")


def trial_scores(df: pd.DataFrame, pick: str = "best") -> pd.DataFrame:
    """One row per trial: identity, status, test errors (best epoch or last epoch), device-hours, images/s.

    A trial is failed if any row failed, else diverged if any row diverged, else ok.
    """
    if pick not in PICKS:
        raise AnalysisError(f"pick must be 'best' or 'final', got {pick!r}")
    if df.empty:
        raise AnalysisError("no result rows to analyse; load a results folder with load_results(path)")
    by = df.groupby("trial_key")
    status = pd.Series(pd.Categorical(df["status"], categories=STATUSES, ordered=True), index=df.index)
    if pick == "best":
        scores = by[list(METRICS)].min()
    else:
        last = df.sort_values(["trial_key", "epoch"]).drop_duplicates("trial_key", keep="last")
        scores = last.set_index("trial_key")[list(METRICS)]
    return (
        by[["experiment", "config_key", *CELL, "seed", "seeds_planned"]]
        .first()
        .assign(status=status.groupby(df["trial_key"], observed=True).max().astype(str))
        .join(scores)
        .assign(
            device_hours=(df["wall_s"] * df["workers"]).groupby(df["trial_key"]).sum() / 3600,
            images_per_s=by["images_per_s"].mean(),
        )
        .reset_index()
    )


def summarize(df: pd.DataFrame, pick: str = "best") -> pd.DataFrame:
    """Mean, sample std (ddof=1) and n of the ok seeds for each (recipe, model, dataset, augmentation,
    variant, alpha, r), with seeds_planned, `incomplete` (fewer ok seeds than planned), the diverged and
    failed counts, and the mean device-hours per trial and images/s of the ok trials."""
    trials = trial_scores(df, pick)
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
    """The paper's scheme a cell belongs to: Standard (α=0), SAM (α=1), GNP (0<α<1); other variants by
    name; None for the rest (gnp with α<0 or α>1, which the paper reports as diverging)."""
    if variant in ("standard", "gnp") and alpha == 0:
        return "Standard"
    if variant == "sam" or (variant == "gnp" and alpha == 1):
        return "SAM"
    if variant == "gnp" and 0 < alpha < 1:
        return "GNP"
    if variant in ("fgr", "bgr", "db") and alpha != 0:
        return variant.upper()
    return None


def select_schemes(summary: pd.DataFrame) -> pd.DataFrame:
    """For each model block and scheme, the cell with the lowest mean top-1 error (then top-5), as the paper
    chooses; a scheme none of whose cells has an ok seed keeps a row with no α, r or error and the
    diverged and failed counts of all its cells."""
    cells = summary.assign(
        scheme=[scheme_of(v, a) for v, a in zip(summary["variant"], summary["alpha"], strict=True)]
    )
    cells = cells.dropna(subset=["scheme"]).sort_values(
        ["test_top1_err_mean", "test_top5_err_mean", "alpha", "r"], na_position="last"
    )
    key = [*BLOCK, "scheme"]
    best = cells.groupby(key, sort=False).head(1).set_index(key)
    none_ok = best.index[best["n"] == 0]
    best.loc[none_ok, ["alpha", "r"]] = float("nan")
    best.loc[none_ok, ["diverged", "failed"]] = cells.groupby(key)[["diverged", "failed"]].sum().loc[none_ok]
    best = best.reset_index()
    rank = best["scheme"].map({name: i for i, name in enumerate(SCHEMES)})
    columns = [*BLOCK, "scheme", "variant", "alpha", "r", *summary.columns.drop(CELL)]
    return best.assign(rank=rank).sort_values([*BLOCK, "rank"])[columns].reset_index(drop=True)
