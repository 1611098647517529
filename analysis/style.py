"""What every figure shares: one colour per scheme (each dark enough to read on white), the titles that
say model, data, pick and n, and a canvas that never goes through pyplot (a notebook keeps its backend)."""

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis.summary import SCHEMES, scheme_of
from gnp import variants

# Keyed by the scheme's name, so that a variant added to the registry recolours no other; a label without
# its own colour takes a spare one, in the registry's order.
_NAMED = {"Standard": "#000000", "GNP": "#1f5fa8", "SAM": "#c0282d", "FGR": "#23843a", "BGR": "#7b3fa0",
          "ASAM": "#8c564b", "DB": "#b35900"}
_SPARE = ("#00707a", "#6b6b00", "#a0306e", "#3d5a80")
_PALETTE = (*_NAMED.values(), *_SPARE)


def colors_for(labels) -> dict[str, str]:
    """Each named scheme its own colour, the other labels the spare ones in their order."""
    others = [label for label in labels if label not in _NAMED]
    return {**_NAMED, **{label: _SPARE[i % len(_SPARE)] for i, label in enumerate(others)}}


COLORS = colors_for(SCHEMES)
OTHER = "#555555"  # a variant the registry does not know
# Lines that are not a scheme (an augmentation, a cell with α > 1): never Standard's black or SAM's red, which
# mark the standard and SAM points (and the reference) beside them.
SERIES = tuple(c for c in _PALETTE if c not in (COLORS["Standard"], COLORS["SAM"]))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")
STYLES = ("-", "--", "-.", ":")


def label_of(variant: str, alpha: float) -> str:
    """The cell's scheme, or for a cell outside every scheme (gnp with α > 1) its variant's label."""
    known = variants.REGISTRY.get(variant)
    return scheme_of(variant, alpha) or (known.label if known else variant)


def color_of(label: str) -> str:
    return COLORS.get(label, OTHER)


def family(variant: str) -> str:
    """The α line a variant's cells lie on: its own, or the one it is a fixed-α case of (sam: gnp)."""
    known = variants.REGISTRY.get(variant)
    return (known.alias_of or variant) if known else variant


def family_label(name: str) -> str:
    known = variants.REGISTRY.get(name)
    return known.label if known else name


def new_figure(panels: int, width: float = 5.5, height: float = 4.2) -> tuple[Figure, list]:
    figure = Figure(figsize=(width * panels + 2.5, height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    return figure, list(axes)


def block_title(block: tuple, pick: str, seeds: pd.Series, names: list[str]) -> str:
    """'model on data (augmentation), recipe R[, option = value ...] · best epoch per trial · n = 3 seeds'
    (`names`: the block's columns, the options that vary after the first four)."""
    recipe, model, dataset, augmentation, *options = block
    at = "best epoch (lowest top-1) per trial" if pick == "best" else "final epoch per trial"
    low, high = int(seeds.min()), int(seeds.max())
    n = f"n = {low} seed{'s' * (high != 1)}" if low == high else f"n = {low}–{high} seeds per point"
    given = "".join(f", {name} = {value}" for name, value in zip(names[4:], options, strict=True))
    return f"{model} on {dataset} ({augmentation}), recipe {recipe}{given} · {at} · {n}"


def integer_ticks(ax) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def legend(figure: Figure, axes: list, title: str) -> None:
    """One legend for all panels, each label once (a panel may lack a series another has)."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    figure.legend(list(entries.values()), list(entries), loc="outside right upper", fontsize="small")
    figure.suptitle(title, x=0.01, ha="left", fontsize="medium")  # left: clear of a tall legend
