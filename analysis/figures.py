"""The paper's figures from the results, one set per model block, each as PNG and PDF: test error vs α with
95% intervals, a line per variant and r (Figure 2), the heatmap of mean error over the (α, r) grid, and
the mean ‖g1‖ and test error per epoch for each cell (Figure 3).

Every variant whose registry entry is in the α figure is drawn (gnp.variants: standard, GNP, SAM, F-GR,
...), each in its scheme's colour in every figure; only ok trials enter the curves.
"""

import re
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis.comparison import mean_interval
from analysis.errors import AnalysisError
from analysis.heatmap import heatmap_figure
from analysis.style import (
    MARKERS,
    STYLES,
    block_title,
    color_of,
    family,
    family_label,
    integer_ticks,
    label_of,
    legend,
    new_figure,
)
from analysis.summary import BLOCK, block_of, option_text, scheme_rank, summarize, trial_scores
from gnp import variants

FAMILY = tuple(name for name, v in variants.REGISTRY.items() if v.in_alpha_figure)
FORMATS = ("png", "pdf")
BARS = "bars: 95% t-interval of the mean over seeds (none where n = 1)"


def make_figures(df: pd.DataFrame, out, pick: str = "best") -> list[Path]:
    """Write alpha-, heatmap- and epochs-<block>.{png,pdf} under `out`; returns the paths."""
    summary = summarize(df, pick)
    summary = summary[summary["variant"].isin(FAMILY)]
    trials = trial_scores(df, pick)
    ok = set(trials.loc[trials["status"] == "ok", "trial_key"])
    block = block_of(trials)
    keyed = df.assign(**{name: df[name].map(option_text) for name in block[len(BLOCK):]})
    rows = dict(list(keyed[keyed["trial_key"].isin(ok) & keyed["variant"].isin(FAMILY)].groupby(block)))
    if not (summary["n"] > 0).any():
        shown = ", ".join(FAMILY)
        raise AnalysisError(f"no ok trials of {shown} to plot; check the table's diverged/failed counts")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for values, cells in summary.groupby(block):
        if values not in rows:
            continue
        title = block_title(values, pick, cells.loc[cells["n"] > 0, "n"], block)
        slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", "-".join(dict.fromkeys(map(str, values))))
        drawn = [
            ("alpha", alpha_figure(cells[cells["n"] > 0], title, pick)),
            ("heatmap", heatmap_figure(cells, title)),
            ("epochs", epoch_figure(rows[values], title)),
        ]
        for name, figure in drawn:
            if figure is None:
                continue
            for ext in FORMATS:
                path = out / f"{name}-{slug}.{ext}"
                figure.savefig(path)
                written.append(path)
    return written


def alpha_figure(cells: pd.DataFrame, title: str, pick: str) -> Figure:
    """Figure 2: mean test error vs α with 95% intervals, a line per variant and r from standard (α = 0)
    through the variant's α (GNP's ends at SAM, α = 1)."""
    figure, axes = new_figure(2)
    cells = cells.assign(family=cells["variant"].map(family))
    standard = cells[cells["variant"] == "standard"].nsmallest(1, "test_top1_err_mean")
    lines = cells[cells["variant"] != "standard"]
    radii = sorted(lines["r"].unique())
    groups = sorted(
        lines.groupby(["family", "r"]), key=lambda g: (scheme_rank(family_label(g[0][0])), g[0][1])
    )
    span = max(cells["alpha"].max() - cells["alpha"].min(), 1e-9)
    for ax, metric, name in zip(axes, ("test_top1_err", "test_top5_err"), ("top-1", "top-5"), strict=True):
        for k, ((fam, r), line) in enumerate(groups):
            points = pd.concat([standard, line]).sort_values("alpha")
            dodge = (k - (len(groups) - 1) / 2) * 0.006 * span  # side by side, so the bars stay apart
            i = radii.index(r)
            ax.errorbar(
                points["alpha"] + dodge,
                points[f"{metric}_mean"],
                yerr=mean_interval(points[f"{metric}_std"], points["n"]).fillna(0),
                color=color_of(family_label(fam)),
                marker=MARKERS[i % len(MARKERS)],
                linestyle=STYLES[i % len(STYLES)],
                capsize=3,
                label=f"{family_label(fam)}, r = {r:g}",
            )
        if len(standard):
            ax.axhline(
                standard[f"{metric}_mean"].iloc[0],
                color=color_of("Standard"),
                linestyle=":",
                label="Standard (α = 0)",
            )
        sam = cells[cells["variant"] == "sam"]
        if len(sam):
            ax.plot(
                sam["alpha"],
                sam[f"{metric}_mean"],
                linestyle="none",
                marker="*",
                markersize=14,
                color=color_of("SAM"),
                label="SAM (α = 1)",
                zorder=3,
            )
        ax.set_xlabel("α")
        ax.set_ylabel(f"test {name} error (%), mean over seeds")
        ax.grid(alpha=0.3)
    legend(figure, axes[0], f"{title}\n{BARS}")
    return figure


def epoch_figure(rows: pd.DataFrame, title: str) -> Figure:
    """Figure 3: the seeds' mean ‖g1‖ and test top-1 error per epoch, a line per cell in its scheme's
    colour, a marker and dash per α and r within the scheme."""
    figure, axes = new_figure(2)
    curves = (
        rows.groupby(["variant", "alpha", "r", "epoch"])[["grad_norm", "test_top1_err"]].mean().reset_index()
    )
    keys = curves[["variant", "alpha", "r"]].drop_duplicates()
    keys = keys.assign(label=[label_of(v, a) for v, a in zip(keys["variant"], keys["alpha"], strict=True)])
    keys = keys.assign(rank=keys["label"].map(scheme_rank)).sort_values(["rank", "alpha", "r"])
    several_r = keys.loc[keys["variant"] != "standard", "r"].nunique() > 1
    for (variant, alpha, r, label, _), position in zip(
        keys.itertuples(index=False), keys.groupby("label", sort=False).cumcount(), strict=True
    ):
        curve = curves[(curves["variant"] == variant) & (curves["alpha"] == alpha) & (curves["r"] == r)]
        text = f"{label} α = {alpha:g}" + (f", r = {r:g}" if several_r and variant != "standard" else "")
        for ax, column in zip(axes, ("grad_norm", "test_top1_err"), strict=True):
            ax.plot(
                curve["epoch"],
                curve[column],
                color=color_of(label),
                marker=MARKERS[position % len(MARKERS)],
                markersize=4,
                linestyle=STYLES[position % len(STYLES)],
                label=text,
            )
    axes[0].set_ylabel(r"mean $\|g_1\|$ over the epoch")
    axes[1].set_ylabel("test top-1 error (%), mean over seeds")
    for ax in axes:
        ax.set_xlabel("epoch")
        integer_ticks(ax)
        ax.grid(alpha=0.3)
    legend(figure, axes[0], title)
    return figure
