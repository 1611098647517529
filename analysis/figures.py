"""The paper's figures from the results, as PNG and PDF. Per model block: test error vs α with 95% intervals,
a line per variant and r, top-1 and top-5 (alpha-); the heatmap of mean error over the (α, r) grid
(heatmap-); the mean ‖g1‖ and test error per epoch of each cell (epochs-); and, where α > 1 ran, Figure 3
(fig3-): those cells' ‖∇L‖ and error per epoch against the best α in [0, 1]. Per model across its
augmentations: Figure 2 as the paper draws it (fig2-), a panel per r, a line per augmentation, standard and
SAM marked, diverged cells shown.

Every variant whose registry entry is in the α figure is drawn (gnp.variants: standard, GNP, SAM, F-GR,
...), each in its scheme's colour wherever a line is one scheme; only ok trials enter the means, and a
cell none of whose seeds finished is marked, never silently left out.
"""

import re
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.transforms import offset_copy

from analysis.comparison import mean_interval
from analysis.errors import AnalysisError
from analysis.heatmap import heatmap_figure
from analysis.style import (
    MARKERS,
    SERIES,
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
from analysis.summary import BLOCK, CORE, block_of, choose, option_text, scheme_rank, summarize, trial_scores
from gnp import variants

FAMILY = tuple(name for name, v in variants.REGISTRY.items() if v.in_alpha_figure)
FORMATS = ("png", "pdf")
BARS = "bars: 95% t-interval of the mean over seeds (none where n = 1)"
DIVERGED = "diverged: no seed finished"
MARKED = {"standard": ("Standard", "s", 9), "sam": ("SAM", "*", 15)}  # scheme, marker, size on Figure 2


def make_figures(df: pd.DataFrame, out, pick: str = "best") -> list[Path]:
    """Write alpha-, heatmap-, epochs- and (with α > 1) fig3-<block>.{png,pdf} per model block and
    fig2-<model>.{png,pdf} per model over its augmentations under `out`; returns the paths."""
    summary = summarize(df, pick)
    summary = summary[summary["variant"].isin(FAMILY)]
    final = summarize(df, "final")  # Figure 3's reference: the lowest mean final error, whatever the pick
    trials = trial_scores(df, pick)
    status = trials.set_index("trial_key")["status"]
    block = block_of(trials)
    keyed = df.assign(**{name: df[name].map(option_text) for name in block[len(BLOCK):]})
    keyed = keyed[keyed["variant"].isin(FAMILY)]
    keyed = keyed.assign(trial_status=keyed["trial_key"].map(status))
    rows = dict(list(keyed[keyed["trial_status"] == "ok"].groupby(block)))
    curves = dict(list(keyed[keyed["trial_status"] != "failed"].groupby(block)))  # diverged: until it did
    finals = dict(list(final[final["variant"].isin(FAMILY)].groupby(block)))
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
        drawn = {
            "alpha": alpha_figure(cells[cells["n"] > 0], title, pick),
            "heatmap": heatmap_figure(cells, title),
            "epochs": epoch_figure(rows[values], title),
            "fig3": growth_figure(curves[values], finals[values], title),
        }
        written += _save(drawn, out, values)
    model = [name for name in block if name != "augmentation"]
    for values, cells in summary.groupby(model):
        if not (cells["n"] > 0).any():
            continue
        augmentations = ", ".join(sorted(cells["augmentation"].unique()))
        shown = (*values[:3], augmentations, *values[3:])
        title = block_title(shown, pick, cells.loc[cells["n"] > 0, "n"], block)
        written += _save({"fig2": paper_alpha_figure(cells, title)}, out, values)
    return written


def _save(drawn: dict, out: Path, values: tuple) -> list[Path]:
    slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", "-".join(dict.fromkeys(map(str, values))))
    written = []
    for name, figure in drawn.items():
        if figure is None:
            continue
        for ext in FORMATS:
            path = out / f"{name}-{slug}.{ext}"
            figure.savefig(path)
            written.append(path)
    return written


def alpha_figure(cells: pd.DataFrame, title: str, pick: str) -> Figure:
    """Mean test top-1 and top-5 error vs α with 95% intervals, a line per variant and r from standard
    (α = 0) through the variant's α (GNP's ends at SAM, α = 1): Figure 2's data, all variants and r in one."""
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
    legend(figure, axes, f"{title}\n{BARS}")
    return figure


def epoch_figure(rows: pd.DataFrame, title: str) -> Figure:
    """The seeds' mean ‖g1‖ and test top-1 error per epoch of every cell (growth_figure: α > 1 only), a line
    per cell in its scheme's colour, a marker and dash per α and r within the scheme."""
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
    _epoch_axes(axes)
    legend(figure, axes, title)
    return figure


def paper_alpha_figure(cells: pd.DataFrame, title: str) -> Figure | None:
    """Figure 2 as the paper draws it, for one model over its augmentations (summarize() cells, ok or not): a
    panel per r, mean test top-1 error vs α with 95% intervals, a line per augmentation (per variant when
    there is one augmentation, or a line per both) through standard (α = 0, a black square) and SAM (α = 1,
    a red star). α < 0 and α > 1 often diverge: a cell none of whose seeds finished is a × at the panel's
    top edge labelled "diverged", and a point that lost seeds says how many, so neither passes unseen. None
    without a cell beside standard."""
    cells = cells.assign(family=cells["variant"].map(family))
    standard = choose(cells[cells["variant"] == "standard"], ["augmentation"])
    grid = cells[cells["variant"] != "standard"]
    if grid.empty:
        return None
    augmentations = sorted(grid["augmentation"].unique())
    families = sorted(grid["family"].unique(), key=lambda f: scheme_rank(family_label(f)))
    series = [(a, f) for a in augmentations for f in families]
    radii = sorted(grid["r"].unique())
    span = max(cells["alpha"].max() - cells["alpha"].min(), 1e-9)
    top = "test_top1_err_mean"
    figure, axes = new_figure(len(radii))
    for ax, r in zip(axes, radii, strict=True):
        edge = ax.get_xaxis_transform()  # x in α, y in the panel's height: 1 is its top edge
        for k, (augmentation, fam) in enumerate(series):
            line = grid[(grid["augmentation"] == augmentation) & (grid["family"] == fam) & (grid["r"] == r)]
            if line.empty:
                continue
            points = pd.concat([standard[standard["augmentation"] == augmentation], line])
            points = points.sort_values("alpha")
            x = points["alpha"] + (k - (len(series) - 1) / 2) * 0.006 * span  # side by side: bars stay apart
            j = families.index(fam)
            if len(augmentations) > 1:
                color = SERIES[augmentations.index(augmentation) % len(SERIES)]
                label = augmentation + (f", {family_label(fam)}" if len(families) > 1 else "")
            else:
                color, label = color_of(family_label(fam)), family_label(fam)
            ok = points["n"] > 0
            ax.errorbar(
                x[ok],
                points.loc[ok, top],
                yerr=mean_interval(points.loc[ok, "test_top1_err_std"], points.loc[ok, "n"]).fillna(0),
                color=color,
                marker=MARKERS[j % len(MARKERS)],
                linestyle=STYLES[j % len(STYLES)],
                capsize=3,
                label=label,
            )
            for variant, (scheme, marker, size) in MARKED.items():
                mark = ok & (points["variant"] == variant)
                if mark.any():
                    alpha = variants.REGISTRY[variant].fixed_alpha
                    ax.plot(x[mark], points.loc[mark, top], linestyle="none", marker=marker, markersize=size,
                            color=color_of(scheme), zorder=3, label=f"{scheme} (α = {alpha:g})")
            gone = ~ok & (points["diverged"] > 0)
            # at the top edge, the series side by side (9 points apart) so that none hides another
            beside = offset_copy(edge, figure, x=9 * (k - (len(series) - 1) / 2), units="points")
            if gone.any():
                ax.plot(points.loc[gone, "alpha"], [1.0] * gone.sum(), transform=beside, clip_on=False,
                        linestyle="none", marker="x", markersize=8, color=color, label=DIVERGED)
            for at in points.loc[gone, "alpha"]:
                ax.annotate("diverged", (at, 1.0), xycoords=beside, xytext=(0, -7),
                            textcoords="offset points", rotation=90, ha="center", va="top", color=color,
                            fontsize="x-small")
            for at, point in zip(x[ok], points[ok].itertuples(index=False), strict=True):
                if point.diverged:
                    ax.annotate(f"{point.diverged} div.", (at, point.test_top1_err_mean), xytext=(4, 4),
                                textcoords="offset points", fontsize="x-small", color=color)
        ax.set_title(f"r = {r:g}")
        ax.set_xlim(cells["alpha"].min() - 0.05 * span, cells["alpha"].max() + 0.05 * span)  # the × included
        ax.set_xlabel("α")
        ax.set_ylabel("test top-1 error (%), mean over seeds")
        ax.grid(alpha=0.3)
    legend(figure, axes, f"{title}\n{BARS}; k div.: seeds that diverged, left out of the mean")
    return figure


def growth_figure(rows: pd.DataFrame, final: pd.DataFrame, title: str) -> Figure | None:
    """Figure 3: what happens past SAM. For each cell with α > 1, the seeds' mean ‖∇L‖ (log scale: it can
    grow by orders) and test top-1 error per epoch, a diverged seed counting until it diverged; the block's
    best cell with 0 ≤ α ≤ 1 of the same schemes (lowest mean final top-1, from `final`, a summarize(pick=
    "final") frame) is the black dashed reference. `rows`: the block's epochs of its ok and diverged
    trials. None without an α > 1 cell."""
    above = final[(final["alpha"] > 1) & (final["n"] + final["diverged"] > 0)]
    if above.empty:
        return None
    schemes = final["variant"].map(family).isin({*above["variant"].map(family), "standard"})
    reference = choose(final[schemes & final["alpha"].between(0, 1) & (final["n"] > 0)], block_of(final))
    means = rows.groupby([*CORE, "epoch"])[["grad_norm", "test_top1_err"]].mean()
    figure, axes = new_figure(2)
    for k, cell in enumerate(above.itertuples(index=False)):
        gone = f" ({cell.diverged}/{cell.n + cell.diverged + cell.failed} diverged)" if cell.diverged else ""
        style = dict(color=SERIES[k % len(SERIES)], marker=MARKERS[k % len(MARKERS)], markersize=4,
                     label=f"{label_of(cell.variant, cell.alpha)} α = {cell.alpha:g}, r = {cell.r:g}{gone}")
        _curves(axes, means.loc[(cell.variant, cell.alpha, cell.r)], style)
    for cell in reference.itertuples(index=False):
        r = f", r = {cell.r:g}" if cell.variant != "standard" else ""
        text = f"{label_of(cell.variant, cell.alpha)} α = {cell.alpha:g}{r}"
        style = dict(color="black", linestyle="--", linewidth=2.5, label=f"reference, best 0 ≤ α ≤ 1: {text}")
        _curves(axes, means.loc[(cell.variant, cell.alpha, cell.r)], style)
    axes[0].set_yscale("log")
    axes[0].set_ylabel(r"mean $\|\nabla L\|$ over the epoch (log)")
    _epoch_axes(axes)
    legend(figure, axes, f"{title}\nα > 1 against the best α in [0, 1] (lowest mean final top-1 error)")
    return figure


def _curves(axes: list, curve: pd.DataFrame, style: dict) -> None:
    for ax, column in zip(axes, ("grad_norm", "test_top1_err"), strict=True):
        ax.plot(curve.index, curve[column], **style)


def _epoch_axes(axes) -> None:
    """The per-epoch figures' shared frame: epochs on x, the error panel's label, a light grid."""
    axes[1].set_ylabel("test top-1 error (%), mean over seeds")
    for ax in axes:
        ax.set_xlabel("epoch")
        integer_ticks(ax)
        ax.grid(alpha=0.3)
