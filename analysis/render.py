"""A table's cells as Markdown or as a LaTeX booktabs tabular, and the number formats they share."""

from dataclasses import dataclass, field

import pandas as pd

DASH = "–"  # no value: no ok seed, or no α/r chosen
BOOKTABS = r"% needs \usepackage{booktabs} (\toprule, \midrule, \bottomrule)"


@dataclass
class Table:
    """Rendered cells; `bold` marks the best per model, `breaks` the rows that start a new model."""

    header: list[str]
    align: str
    rows: list[list[str]] = field(default_factory=list)
    bold: list[list[bool]] = field(default_factory=list)
    breaks: set[int] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    def add(self, cells: list[str], bold: list[bool] | None = None, new_block: bool = False) -> None:
        if new_block and self.rows:
            self.breaks.add(len(self.rows))
        self.rows.append(cells)
        self.bold.append(bold or [False] * len(cells))


def render(table: Table, fmt: str) -> str:
    return markdown(table) if fmt == "md" else latex(table)


# ---- cells ------------------------------------------------------------------------------------------------


def mean_std(mean: float, std: float) -> str:
    if pd.isna(mean):
        return DASH
    return f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f} ± {std:.2f}"


def number(value: float, spec: str) -> str:
    return DASH if pd.isna(value) else format(value, spec)


def duration(seconds: float) -> str:
    """Seconds in the unit a reader budgets in: s under 2 minutes, min under 2 hours, else h."""
    if abs(seconds) < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if abs(seconds) < 7200 else f"{seconds / 3600:.1f} h"


# ---- renderers --------------------------------------------------------------------------------------------


def markdown(table: Table) -> str:
    def cell(text: str, bold: bool) -> str:
        text = text.replace("|", r"\|").replace("*", r"\*")
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
    "<": r"$<$",  # text-mode < and > print as ¡ and ¿ in LaTeX's default font encoding
    ">": r"$>$",
    "±": r"$\pm$",
    "α": r"$\alpha$",
    "Δ": r"$\Delta$",
    "−": r"$-$",
    "†": r"$^\dagger$",
    "‡": r"$^\ddagger$",
    "–": "--",
    "×": r"$\times$",
}


def tex(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


def latex(table: Table) -> str:
    """A booktabs tabular for \\input inside a table float; the notes follow as comments for the caption."""

    def row(cells, bold) -> str:
        return (
            " & ".join(
                rf"\textbf{{{tex(c)}}}" if b and c else tex(c) for c, b in zip(cells, bold, strict=True)
            )
            + r" \\"
        )

    lines = [
        BOOKTABS,
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
