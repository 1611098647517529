"""The α × r study at a glance: mean test top-1 error over the grid, a panel per variant, one colour scale.

The α = 0 column is standard training (it has no r: its one cell fills the column) and GNP's α = 1 column
is SAM; both are labelled and outlined. Every cell shows its number, so the colour only guides the eye.
"""

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from analysis.render import DASH
from analysis.style import color_of, family, family_label, label_of, new_figure
from analysis.summary import scheme_rank
from gnp import variants

CMAP = colormaps["viridis"].with_extremes(bad="#d9d9d9")
LEGEND = "mean test top-1 error (%) over the ok seeds; † fewer ok seeds than planned; div: no seed ok"


def heatmap_figure(cells: pd.DataFrame, title: str) -> Figure | None:
    """The heatmap of one model block's cells (a summarize() frame, ok or not); None without any α ≠ 0."""
    cells = cells.assign(family=cells["variant"].map(family))
    standard = cells[(cells["variant"] == "standard") & (cells["n"] > 0)].nsmallest(1, "test_top1_err_mean")
    grid = cells[cells["variant"] != "standard"]
    if grid.empty:
        return None
    families = sorted(grid["family"].unique(), key=lambda f: scheme_rank(family_label(f)))
    shown = pd.concat([grid, standard])["test_top1_err_mean"]
    norm = Normalize(shown.min(), shown.max()) if shown.notna().any() else Normalize(0, 1)
    figure, axes = new_figure(len(families), width=1.1 * grid["alpha"].nunique() + 2.5)
    for ax, fam in zip(axes, families, strict=True):
        image = _panel(ax, grid[grid["family"] == fam], standard, norm)
        ax.set_title(family_label(fam), color=color_of(family_label(fam)))
    figure.colorbar(image, ax=axes, label="mean test top-1 error (%)")
    figure.suptitle(f"{title}\n{LEGEND}", fontsize="medium")
    return figure


def _panel(ax, grid: pd.DataFrame, standard: pd.DataFrame, norm: Normalize):
    alphas = sorted(set(grid["alpha"]) | ({0.0} if len(standard) else set()))
    radii = sorted(grid["r"].unique())
    values = np.full((len(radii), len(alphas)), np.nan)
    texts = np.full((len(radii), len(alphas)), DASH, dtype=object)
    for row in grid.itertuples(index=False):
        i, j = radii.index(row.r), alphas.index(row.alpha)
        values[i, j], texts[i, j] = row.test_top1_err_mean, _text(row)
    if len(standard):
        row = next(standard.itertuples(index=False))
        zero = alphas.index(0.0)  # not always the first column: α < 0 may be in the grid
        values[:, zero], texts[:, zero] = row.test_top1_err_mean, _text(row)
    image = ax.imshow(values, cmap=CMAP, norm=norm, origin="lower", aspect="auto")
    for (i, j), text in np.ndenumerate(texts):
        ax.text(j, i, text, ha="center", va="center", fontsize="small", color=_ink(values[i, j], norm))
    names = _column_names(grid, alphas, len(standard) > 0)
    ticks = [f"{a:g}" + (f"\n{name}" if name else "") for a, name in zip(alphas, names, strict=True)]
    ax.set_xticks(range(len(alphas)), ticks)
    ax.set_yticks(range(len(radii)), [f"{r:g}" for r in radii])
    ax.set_xlabel("α")
    ax.set_ylabel("r")
    for j, name in enumerate(names):
        if name:
            ax.add_patch(
                Rectangle((j - 0.5, -0.5), 1, len(radii), fill=False, edgecolor=color_of(name), linewidth=2.5)
            )
    return image


def _column_names(grid: pd.DataFrame, alphas: list[float], with_standard: bool) -> list[str]:
    """'Standard' under α = 0, the scheme of a fixed-α variant under its column (SAM under 1), else ''."""
    names = []
    for alpha in alphas:
        fixed = [
            v
            for v in grid.loc[grid["alpha"] == alpha, "variant"]
            if getattr(variants.REGISTRY.get(v), "fixed_alpha", None) is not None
        ]
        names.append(
            "Standard" if alpha == 0 and with_standard else label_of(fixed[0], alpha) if fixed else ""
        )
    return names


def _text(row) -> str:
    if row.n == 0:
        return "div" if row.diverged else "failed" if row.failed else "stopped"
    return f"{row.test_top1_err_mean:.2f}" + ("†" if row.incomplete else "")


def _ink(value: float, norm: Normalize) -> str:
    """Black on the light end of the colour map, white on the dark end."""
    if np.isnan(value):
        return "#000000"
    red, green, blue, _ = CMAP(norm(value))
    return "#000000" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "#ffffff"
