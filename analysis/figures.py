"""The paper's figures from the results: test error vs α for each r (Figure 2) and the mean ‖g1‖ and test
error per epoch for each α (Figure 3), one pair per model block, each as PNG and PDF.

Drawn on matplotlib Figure objects with the Agg canvas, never through pyplot, so importing or calling
this changes no global backend (a notebook keeps its own). Only the GNP family (standard, gnp, sam) is
plotted: α is what these figures are about; only ok trials enter the curves.
"""

import re
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.errors import AnalysisError
from analysis.summary import BLOCK, summarize, trial_scores

FAMILY = ("standard", "gnp", "sam")
FORMATS = ("png", "pdf")


def make_figures(df: pd.DataFrame, out, pick: str = "best") -> list[Path]:
    """Write alpha-<block>.{png,pdf} and epochs-<block>.{png,pdf} under `out`; returns the paths."""
    summary = summarize(df, pick)
    summary = summary[summary["variant"].isin(FAMILY) & (summary["n"] > 0)]
    trials = trial_scores(df, pick)
    ok = set(trials.loc[trials["status"] == "ok", "trial_key"])
    rows = dict(list(df[df["trial_key"].isin(ok) & df["variant"].isin(FAMILY)].groupby(BLOCK)))
    if summary.empty:
        raise AnalysisError(
            "no ok trials of standard, gnp or sam to plot; check the table's diverged/failed counts"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for block, cells in summary.groupby(BLOCK):
        recipe, model, dataset, augmentation = block
        title = f"{model} on {dataset} ({augmentation}), recipe {recipe}"
        slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", "-".join(dict.fromkeys(map(str, block))))
        for name, figure in (
            ("alpha", alpha_figure(cells, title, pick)),
            ("epochs", epoch_figure(rows[block], title)),
        ):
            for ext in FORMATS:
                path = out / f"{name}-{slug}.{ext}"
                figure.savefig(path)
                written.append(path)
    return written


def _figure() -> tuple[Figure, list]:
    figure = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, list(figure.subplots(1, 2))


def alpha_figure(cells: pd.DataFrame, title: str, pick: str) -> Figure:
    """Figure 2: mean ± std test error vs α, a line per r from standard (α=0) through GNP to SAM (α=1)."""
    figure, axes = _figure()
    standard = cells[cells["alpha"] == 0].nsmallest(1, "test_top1_err_mean")
    for ax, metric, name in zip(axes, ("test_top1_err", "test_top5_err"), ("top-1", "top-5"), strict=True):
        for r, line in cells[cells["alpha"] != 0].groupby("r"):
            points = pd.concat([standard, line]).sort_values("alpha")
            ax.errorbar(
                points["alpha"],
                points[f"{metric}_mean"],
                yerr=points[f"{metric}_std"].fillna(0),
                marker="o",
                capsize=3,
                label=f"r = {r:g}",
            )
        if len(standard):
            ax.axhline(
                standard[f"{metric}_mean"].iloc[0], color="black", linestyle=":", label="standard (α = 0)"
            )
        sam = cells[cells["alpha"] == 1]
        if len(sam):
            ax.plot(
                sam["alpha"],
                sam[f"{metric}_mean"],
                linestyle="none",
                marker="*",
                markersize=14,
                color="black",
                label="SAM (α = 1)",
            )
        ax.set_xlabel("α")
        ax.set_ylabel(f"test {name} error (%), {pick} epoch")
        ax.grid(alpha=0.3)
    _legend(figure, axes[0], title)
    return figure


def epoch_figure(rows: pd.DataFrame, title: str) -> Figure:
    """Figure 3: the seeds' mean ‖g1‖ and test top-1 error per epoch, a line per α (and r if several)."""
    figure, axes = _figure()
    curves = rows.groupby(["alpha", "r", "epoch"])[["grad_norm", "test_top1_err"]].mean().reset_index()
    several_r = curves.loc[curves["alpha"] != 0, "r"].nunique() > 1
    alphas, radii = sorted(curves["alpha"].unique()), sorted(curves["r"].unique())
    colors, styles = matplotlib.colormaps["viridis"], ("-", "--", ":", "-.")
    for (alpha, r), curve in curves.groupby(["alpha", "r"]):
        label = f"α = {alpha:g}" + (f", r = {r:g}" if several_r and alpha != 0 else "")
        color = colors(alphas.index(alpha) / max(len(alphas) - 1, 1))
        style = styles[radii.index(r) % len(styles)]
        for ax, column in zip(axes, ("grad_norm", "test_top1_err"), strict=True):
            ax.plot(curve["epoch"], curve[column], marker=".", color=color, linestyle=style, label=label)
    axes[0].set_ylabel(r"mean $\|g_1\|$ over the epoch")
    axes[1].set_ylabel("test top-1 error (%)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    _legend(figure, axes[0], title)
    return figure


def _legend(figure: Figure, ax, title: str) -> None:
    figure.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    figure.suptitle(title)
