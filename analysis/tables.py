"""The paper's tables as Markdown, LaTeX (a booktabs tabular) or CSV.

Three layouts: "schemes" (Table 4: Standard / SAM / GNP per model, top-1 and top-5 error, cost beside
accuracy), "datasets" (Table 1: top-1 error per dataset × augmentation) and "cells" (every variant, α and
r of the grid). Markdown and LaTeX show "mean ± std" with the best per model in bold and notes on what was
left out; CSV gives the numbers behind the table (mean and std in their own columns) for spreadsheets.
"""

from dataclasses import dataclass, field

import pandas as pd

from analysis.errors import AnalysisError
from analysis.summary import BLOCK, select_schemes, summarize

FORMATS = ("md", "latex", "csv")
KINDS = ("schemes", "datasets", "cells")
DASH = "–"  # no value: no ok seed, or no α/r chosen


@dataclass
class Table:
    """Rendered cells; `bold` marks the best per model, `breaks` the rows that start a new model."""

    header: list[str]
    align: str
    rows: list[list[str]] = field(default_factory=list)
    bold: list[list[bool]] = field(default_factory=list)
    breaks: set[int] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


def format_table(df: pd.DataFrame, fmt: str = "md", pick: str = "best", kind: str = "schemes") -> str:
    """The table of the loaded result rows `df` (see load_results) as text in `fmt` (md, latex or csv)."""
    if fmt not in FORMATS:
        raise AnalysisError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if kind not in KINDS:
        raise AnalysisError(f"table kind must be one of {', '.join(KINDS)}, got {kind!r}")
    summary = summarize(df, pick)
    frame = summary if kind == "cells" else select_schemes(summary)
    if fmt == "csv":
        return frame.to_csv(index=False)
    table = {"schemes": _scheme_table, "datasets": _dataset_table, "cells": _cell_table}[kind](frame)
    table.notes = _notes(summary, pick, flagged=any("†" in text for row in table.rows for text in row))
    return _markdown(table) if fmt == "md" else _latex(table)


# ---- layouts ----------------------------------------------------------------------------------------------


def _scheme_table(frame: pd.DataFrame) -> Table:
    return _per_cell_table(frame, "Scheme", frame["scheme"])


def _cell_table(frame: pd.DataFrame) -> Table:
    return _per_cell_table(frame, "Variant", frame["variant"])


def _per_cell_table(frame: pd.DataFrame, label: str, names: pd.Series) -> Table:
    """One row per selected scheme or grid cell, model and data written once per block."""
    table = Table(
        header=[
            "Model",
            "Data",
            label,
            "α",
            "r",
            "Top-1 err (%)",
            "Top-5 err (%)",
            "Seeds",
            "Diverged",
            "Failed",
            "Device-h/trial",
            "img/s",
        ],
        align="lllrrrrrrrrr",
    )
    bold1, bold5 = (_best_in_block(frame, f"{m}_mean", BLOCK) for m in ("test_top1_err", "test_top5_err"))
    previous = None
    for i, row in enumerate(frame.itertuples(index=False)):
        block = tuple(getattr(row, name) for name in BLOCK)
        if block != previous and i:
            table.breaks.add(i)
        table.rows.append(
            [
                row.model if block != previous else "",
                f"{row.dataset} ({row.augmentation})" if block != previous else "",
                names.iloc[i],
                _number(row.alpha, "g"),
                _number(row.r, "g"),
                _mean_std(row.test_top1_err_mean, row.test_top1_err_std),
                _mean_std(row.test_top5_err_mean, row.test_top5_err_std),
                _seeds(row),
                str(row.diverged),
                str(row.failed),
                _number(row.device_hours, ".3g"),
                _number(row.images_per_s, ".0f"),
            ]
        )
        table.bold.append([False] * 5 + [bold1.iloc[i], bold5.iloc[i]] + [False] * 5)
        previous = block
    return table


def _dataset_table(frame: pd.DataFrame) -> Table:
    """Table 1: rows model × scheme, a column of top-1 error per dataset × augmentation, the chosen α and r
    in each cell."""
    rows, columns = ["model", "scheme"], ["dataset", "augmentation"]
    if frame.duplicated(rows + columns).any():
        raise AnalysisError(
            "two recipes train the same model on the same dataset and augmentation; filter the rows to one "
            "recipe (df[df.recipe == ...]) or use the schemes table"
        )
    cells = frame.assign(
        text=[_dataset_cell(row) for row in frame.itertuples(index=False)],
        bold=_best_in_block(frame, "test_top1_err_mean", ["model", *columns]),
    )
    order = dict(
        index=pd.MultiIndex.from_frame(frame[rows].drop_duplicates()),
        columns=pd.MultiIndex.from_frame(frame[columns].drop_duplicates()),
    )
    text = cells.pivot(index=rows, columns=columns, values="text").reindex(**order).fillna(DASH)
    bold = cells.pivot(index=rows, columns=columns, values="bold").reindex(**order).fillna(False)
    table = Table(
        header=["Model", "Scheme", *(f"{d} ({a}) top-1 err (%)" for d, a in text.columns)],
        align="ll" + "r" * len(text.columns),
    )
    models = list(text.index.get_level_values("model"))
    for i, ((model, scheme), values) in enumerate(text.iterrows()):
        first = i == 0 or models[i - 1] != model
        if first and i:
            table.breaks.add(i)
        table.rows.append([model if first else "", scheme, *values])
        table.bold.append([False, False, *map(bool, bold.iloc[i])])
    return table


def _dataset_cell(row) -> str:
    text = _mean_std(row.test_top1_err_mean, row.test_top1_err_std) + ("†" if row.incomplete else "")
    if row.scheme != "Standard" and pd.notna(row.alpha):
        text += f" (α {row.alpha:g}, r {row.r:g})"
    return text


def _best_in_block(frame: pd.DataFrame, column: str, block: list[str]) -> pd.Series:
    """True where the value is the block's lowest (ties all bold); never for a missing value."""
    return frame[column].eq(frame.groupby(block)[column].transform("min")) & frame[column].notna()


def _notes(summary: pd.DataFrame, pick: str, flagged: bool) -> list[str]:
    scored = "its best epoch" if pick == "best" else "its last epoch"
    notes = [
        f"Test error in %, mean ± sample std over the ok seeds, each trial scored at {scored} "
        f"(--pick {pick}); bold: best per model."
    ]
    if flagged:
        notes.append("† fewer ok seeds than planned (diverged, failed or missing trials).")
    bad = summary[(summary["diverged"] > 0) | (summary["failed"] > 0)]
    if len(bad):
        notes.append(
            "Not averaged in: "
            + "; ".join(
                f"{row.model}/{row.dataset} {row.variant} α={row.alpha:g} r={row.r:g}: "
                + ", ".join(
                    f"{count} {status}"
                    for status, count in (("diverged", row.diverged), ("failed", row.failed))
                    if count
                )
                for row in bad.itertuples(index=False)
            )
            + "."
        )
    return notes


# ---- cells ------------------------------------------------------------------------------------------------


def _mean_std(mean: float, std: float) -> str:
    if pd.isna(mean):
        return DASH
    return f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f} ± {std:.2f}"


def _number(value: float, spec: str) -> str:
    return DASH if pd.isna(value) else format(value, spec)


def _seeds(row) -> str:
    return f"{row.n}/{row.seeds_planned}" + ("†" if row.incomplete else "")


# ---- renderers --------------------------------------------------------------------------------------------


def _markdown(table: Table) -> str:
    def cell(text: str, bold: bool) -> str:
        text = text.replace("|", r"\|")
        return f"**{text}**" if bold and text else text

    lines = [
        "| " + " | ".join(table.header) + " |",
        "|" + "|".join(":---" if a == "l" else "---:" for a in table.align) + "|",
        *(
            "| " + " | ".join(map(cell, row, bold)) + " |"
            for row, bold in zip(table.rows, table.bold, strict=True)
        ),
    ]
    return "\n".join(lines + ([""] + table.notes if table.notes else [])) + "\n"


_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "α": r"$\alpha$",
    "†": r"$^\dagger$",
    "–": "--",
    "×": r"$\times$",
}


def _tex(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


def _latex(table: Table) -> str:
    """A booktabs tabular for \\input inside a table float; the notes follow as comments for the caption."""

    def row(cells, bold) -> str:
        return (
            " & ".join(
                rf"\textbf{{{_tex(c)}}}" if b and c else _tex(c) for c, b in zip(cells, bold, strict=True)
            )
            + r" \\"
        )

    lines = [
        rf"\begin{{tabular}}{{{table.align}}}",
        r"\toprule",
        row(table.header, [False] * len(table.header)),
        r"\midrule",
    ]
    for i, (cells, bold) in enumerate(zip(table.rows, table.bold, strict=True)):
        if i in table.breaks:
            lines.append(r"\midrule")
        lines.append(row(cells, bold))
    lines += [r"\bottomrule", r"\end{tabular}", *(f"% {note}" for note in table.notes)]
    return "\n".join(lines) + "\n"
