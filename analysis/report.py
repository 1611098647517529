"""`python -m analysis report`: the paper's Tables 1, 2–3 and 4 with ours beside the published values, from
whatever results exist, as report.md and one self-contained report.html, so a reviewer sees in one place how
far each cell is from the paper, how it was chosen, what it cost and what is still missing.

Our numbers are analysis.summary's (trial scores, mean ± std over the ok seeds, the paper's choice of α and
r per scheme); the paper's and its layout are analysis.paper's. Nothing is filled in that neither holds.
"""

import base64
import html
import math
from pathlib import Path

import pandas as pd

from analysis import paper
from analysis.errors import AnalysisError
from analysis.figures import make_figures
from analysis.render import DASH, Table, markdown, mean_std
from analysis.summary import (
    BLOCK,
    block_of,
    model_rank,
    scheme_rank,
    select_schemes,
    summarize_trials,
    trial_scores,
)
from gnp import storage
from gnp.rows import LOST

METRICS = {"top-1": ("test_top1_err", 0), "top-5": ("test_top5_err", 2)}  # our column, paper_errors index
OUTSIDE = "outside the paper's tables"
COLUMN = ["dataset", "augmentation"]  # a table's column
NOT_GPU = {"cpu", "unknown"}  # gnp.loop.device_name's CPU; jobs.driver's trial that failed before training
RULE = (
    "Δ = ours − paper, in percentage points. Within spread: |Δ| ≤ our sample std over seeds, or "
    "≤ √(our std² + paper std²) where the paper's std is transcribed; no spread is claimed with fewer than 2 "
    "ok seeds. n: our ok seeds / seeds planned (the paper's seeds per cell: "
    + ", ".join(f"{layout['seeds']} in {name}" for name, layout in paper.LAYOUTS.items()) + ")."
)
CSS = (
    "body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1500px;padding:0 1em;color:#111}"
    "table{border-collapse:collapse;margin:.8em 0;font-size:13px}"
    "th,td{border:1px solid #c8c8c8;padding:4px 8px;vertical-align:top;text-align:left}"
    "th{background:#f0f0f0}.outside{color:#b00020;font-weight:600}"
    "figure{display:inline-block;margin:.5em;vertical-align:top}img{max-width:100%}"
    "figcaption{font-size:12px;color:#555}"
)


def default_out(results: str) -> Path:
    """RESULTS/report; a URI has no local folder beside it to write into."""
    if storage.is_uri(results):
        raise AnalysisError(f"{results} is not a local folder; give the report a local folder with --out")
    return Path(results) / "report"


def write_report(df: pd.DataFrame, out, pick: str = "best", source: str = "") -> list[Path]:
    """Write report.md, report.html and the figures (figures/) under `out`; returns the two report paths."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        parts = build_report(df, out, pick, source)
        paths = [out / "report.md", out / "report.html"]
        paths[0].write_text(to_markdown(parts), encoding="utf-8")
        paths[1].write_text(to_html(parts, out), encoding="utf-8")
    except OSError as err:
        raise AnalysisError(f"cannot write the report to {out} ({err}); choose another --out") from None
    return paths


def table_of(model: str, dataset: str) -> str | None:
    """The paper table a result belongs to: one whose rows name the network, else the first whose columns
    hold the dataset (another CNN on CIFAR: Table 1); None outside every table."""
    tables = [name for name, layout in paper.LAYOUTS.items() if dataset in dict(layout["columns"])]
    listing = [name for name in tables if model in paper.LAYOUTS[name]["models"]]
    return (listing + tables + [None])[0]


def tables_of(frame: pd.DataFrame) -> pd.Series:
    """table_of for every row of `frame` (None outside every table)."""
    keys = list(zip(frame["model"], frame["dataset"], strict=True))
    known = {key: table_of(*key) for key in set(keys)}
    return pd.Series([known[key] for key in keys], index=frame.index, dtype=object)


# ---- the cells ---------------------------------------------------------------------------------------------


def compare_cells(chosen: pd.DataFrame) -> pd.DataFrame:
    """One row per (table, row, scheme, column, metric) of every table, in the paper's layout followed by
    whatever else we have: ours (n NaN where we have none), the paper's, Δ and whether it is within spread.
    `chosen`: select_schemes' rows with `table` and `label` (see _with_labels)."""
    rows = []
    for name, layout in paper.LAYOUTS.items():
        ours = chosen[chosen["table"] == name]
        found = {(r.label, r.scheme, r.dataset, r.augmentation): r for r in ours.itertuples(index=False)}
        extra = set(zip(ours["dataset"], ours["augmentation"], strict=True)) - set(layout["columns"])
        columns = [*layout["columns"], *sorted(extra)]
        for label, model, scheme in _row_keys(ours, layout):
            for dataset, augmentation in columns:
                hit = found.get((label, scheme, dataset, augmentation))
                for metric in layout["metrics"]:
                    key = dict(table=name, label=label, model=model, scheme=scheme, dataset=dataset,
                               augmentation=augmentation, metric=metric)
                    rows.append({**key, **_cell(layout, key, hit)})
    return pd.DataFrame(rows)


def _row_keys(ours: pd.DataFrame, layout: dict) -> list[tuple[str, str, str]]:
    """(label, network, scheme) per row: the paper's networks, then ours it does not list; per label the
    paper's schemes in its order, then any other scheme we ran."""
    models = [*layout["models"], *sorted(set(ours["model"]) - set(layout["models"]), key=model_rank)]
    keys = []
    for model in models:
        mine = ours[ours["model"] == model]
        for label in sorted(set(mine["label"])) or [model]:
            others = set(mine.loc[mine["label"] == label, "scheme"]) - set(paper.SCHEMES)
            keys += [(label, model, s) for s in (*paper.SCHEMES, *sorted(others, key=scheme_rank))]
    return keys


def _cell(layout: dict, key: dict, hit) -> dict:
    column, at = METRICS[key["metric"]]
    in_paper = key["scheme"] in paper.SCHEMES and (key["dataset"], key["augmentation"]) in layout["columns"]
    listed = key["model"] in layout["models"]
    published = paper.paper_errors(key["model"], key["dataset"], key["augmentation"], key["scheme"])
    paper_mean, paper_std = published[at : at + 2] if in_paper and listed else (math.nan, math.nan)
    if not in_paper or (not listed and layout["complete"]):
        paper_note = "not in the paper"
    else:
        paper_note = "paper: not transcribed" if math.isnan(paper_mean) else ""
    names = (f"{column}_mean", f"{column}_std", "n", "seeds_planned", *LOST, "alpha", "r")
    ours = {c: getattr(hit, c) if hit is not None else math.nan for c in names}
    mean, std = ours.pop(f"{column}_mean"), ours.pop(f"{column}_std")
    diff = mean - paper_mean
    tolerance = std if math.isnan(paper_std) else math.hypot(std, paper_std)
    within = None if math.isnan(diff) or math.isnan(tolerance) else bool(abs(diff) <= tolerance)
    return dict(
        mean=mean, std=std, **ours,
        paper_mean=paper_mean, paper_std=paper_std, paper_note=paper_note, diff=diff, tolerance=tolerance,
        within=within, in_layout=in_paper and listed,
    )


def _with_labels(chosen: pd.DataFrame) -> pd.DataFrame:
    """The chosen cells of the paper's tables, each with its row's label: the network, plus the recipe or
    options that differ within its column (two recipes for ViT basic, say), else they would share a cell."""
    extras = [c for c in block_of(chosen) if c not in BLOCK[1:]]
    column = chosen.groupby(["table", "model", *COLUMN])
    varies = pd.DataFrame({c: column[c].transform(lambda s: s.nunique(dropna=False)) > 1 for c in extras},
                          index=chosen.index, columns=extras)

    def label(i, row) -> str:
        shown = [f"{c} {row[c]}" for c in extras if varies.at[i, c]]
        return row["model"] + (f" ({', '.join(shown)})" if shown else "")

    return chosen.assign(label=[label(i, row) for i, row in chosen.iterrows()])


# ---- the report's parts ------------------------------------------------------------------------------------


def build_report(df: pd.DataFrame, out: Path, pick: str, source: str) -> list[tuple[str, object]]:
    """The report as (kind, payload) parts that render as Markdown and as HTML alike; writes the figures."""
    trials = trial_scores(df, pick)
    chosen = select_schemes(summarize_trials(trials))
    chosen = _with_labels(chosen.assign(table=tables_of(chosen)).dropna(subset=["table"]))
    cells = compare_cells(chosen)
    have = [name for name in paper.LAYOUTS if (chosen["table"] == name).any()]
    none = [name for name in paper.LAYOUTS if name not in have]
    ok = int((trials["status"] == "ok").sum())
    parts = [
        ("h1", f"Our results beside the paper's: {paper.SOURCE}"),
        ("p", f"Results: {source or 'the given rows'}: {len(trials)} trials ({ok} ok)."),
        ("p", _selection(pick)),
        ("p", RULE),
        ("p", f"Tables with results here: {', '.join(have) or 'none'}. "
              f"Tables with no results here: {', '.join(none) or 'none'}."),
    ]
    outside = trials.loc[tables_of(trials).isna(), ["model", "dataset", "augmentation"]]
    if len(outside):
        blocks = sorted({f"{m} on {d} ({a})" for m, d, a in outside.values})
        parts.append(("p", f"Results {OUTSIDE} (in the GPU-hours, nowhere else): {'; '.join(blocks)}."))
    for name in have:
        parts += _table_parts(name, cells[cells["table"] == name], df, out, pick)
    parts += [("h2", "GPU-hours"), ("table", gpu_hours(df, trials)), ("p", _COST)]
    return parts + _missing_parts(cells)


_SCORED = {
    "best": "each trial scored at the epoch of its lowest test top-1 error, top-5 at that same epoch "
            "(--pick best, the paper's rule)",
    "final": "each trial scored at its last epoch (--pick final)",
    "holdout": "each trial scored at the epoch of its lowest error on the training images it held out "
               "(--pick holdout)",
}


def _selection(pick: str) -> str:
    """Say how our numbers were chosen, and whether that choice looked at the test set they report."""
    by = "held-out" if pick == "holdout" else "test top-1"
    honesty = {
        "best": "Both the epoch and the (α, r) are chosen on the test set the errors are measured on, so "
                "our numbers are optimistic (--pick final scores each trial's last epoch; --pick holdout "
                "chooses on held-out training images).",
        "final": "The (α, r) is chosen on the test set the errors are measured on, so our numbers are "
                 "optimistic.",
        "holdout": "Neither looks at the test set the errors are measured on.",
    }[pick]
    return (
        f"Selection: {_SCORED[pick]}; mean ± sample std over its ok seeds (stopped, diverged and failed "
        f"trials never averaged in); per network, column and scheme, the (α, r) of lowest mean {by} error "
        f"(analysis.summary.select_schemes, as the paper chooses). {honesty}"
    )


def _table_parts(name: str, cells: pd.DataFrame, df: pd.DataFrame, out: Path, pick: str) -> list:
    layout = paper.LAYOUTS[name]
    first = cells[cells["metric"] == layout["metrics"][0]]
    parts = [
        ("h2", f"{name}: {layout['title']}, test error (%)"),
        ("table", _grid(cells, _parts, metrics=len(layout["metrics"]) > 1)),
        ("h3", f"{name}: chosen (α, r) per scheme"),
        ("table", _grid(first, _choice, metrics=False)),
    ]
    if not layout["complete"]:
        parts.append(("p", f"Only {', '.join(layout['models'])} of {name} is transcribed "
                           "(analysis/paper.py): other networks show 'paper: not transcribed'."))
    try:
        paths = make_figures(df[tables_of(df) == name], out / "figures", pick)
        figures = [("img", path.relative_to(out)) for path in paths if path.suffix == ".png"]
    except AnalysisError as err:
        figures = [("p", f"No figures: {err}")]
    return parts + [("h3", f"{name}: figures")] + figures


def _grid(cells: pd.DataFrame, text, metrics: bool) -> pd.DataFrame:
    """Rows label × scheme, columns the table's (dataset, augmentation[, metric]) in the cells' order."""
    frame = cells.assign(
        column=[f"{d} ({a})" + (f" {m}" if metrics else "")
                for d, a, m in cells[["dataset", "augmentation", "metric"]].values],
        text=[text(c) for c in cells.itertuples(index=False)],
    )
    wide = frame.pivot(index=["label", "scheme"], columns="column", values="text")
    rows = pd.MultiIndex.from_frame(frame[["label", "scheme"]].drop_duplicates())
    wide = wide.reindex(index=rows, columns=list(dict.fromkeys(frame["column"])))
    return wide.reset_index().rename(columns={"label": "Model", "scheme": "Scheme"})


def _parts(c) -> tuple[str, ...]:
    """A comparison cell: ours, the paper's, Δ with its within-spread flag, n."""
    lost = ", ".join(f"{int(getattr(c, s))} {s}" for s in LOST if getattr(c, s) > 0)
    ours = mean_std(c.mean, c.std) if c.n > 0 else "missing" + (f" ({lost})" if lost else "")
    parts = [ours, c.paper_note or f"paper {mean_std(c.paper_mean, c.paper_std)}"]
    if not math.isnan(c.diff):
        flag = "no spread (n < 2)" if c.within is None else "within" if c.within else "outside"
        parts.append(f"Δ {c.diff:+.2f} {flag}")
    if c.n > 0 or lost:
        parts.append(f"n {int(c.n)}/{int(c.seeds_planned)}")
    return tuple(parts)


def _choice(c) -> str:
    return DASH if math.isnan(c.alpha) else f"α {c.alpha:g}, r {c.r:g}"


# ---- cost and what is missing ------------------------------------------------------------------------------

_COST = (
    "Device-hours: per trial, its epochs' wall time × workers (analysis.summary.trial_scores), summed "
    "over every trial of the table, whatever its status, and every (α, r) of the grid, not only the "
    "chosen ones. GPU: trials whose rows name a GPU device; trials on CPUs (or an unknown device) are "
    "counted apart. Ray's own time (starting worker groups, checkpoints) is not in it."
)


def gpu_hours(df: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Per paper table (every one, then any results outside them) and in total: trials, and their
    device-hours on GPUs and elsewhere."""
    device = trials["trial_key"].map(df.groupby("trial_key")["device"].first())
    gpu = ~device.str.lower().isin(NOT_GPU)
    frame = trials.assign(table=tables_of(trials).fillna(OUTSIDE), gpu=gpu,
                          gpu_h=trials["device_hours"].where(gpu, 0.0),
                          other_h=trials["device_hours"].where(~gpu, 0.0))
    per = frame.groupby("table").agg(trials=("gpu", "size"), gpu_trials=("gpu", "sum"),
                                     gpu_h=("gpu_h", "sum"), other_h=("other_h", "sum"))
    per = per.reindex([*paper.LAYOUTS, *([OUTSIDE] if OUTSIDE in per.index else [])], fill_value=0)
    per.loc["Total"] = per.sum()
    return pd.DataFrame({
        "Table": per.index,
        "Trials": per["trials"].astype(int).astype(str).values,
        "on GPUs": per["gpu_trials"].astype(int).astype(str).values,
        "GPU-hours": [f"{h:.2f}" for h in per["gpu_h"]],
        "CPU/other device-hours": [f"{h:.2f}" for h in per["other_h"]],
    })


def missing_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """The paper's cells (its networks, schemes and columns) that hold no ok seed of ours."""
    key = ["table", "model", "scheme", "dataset", "augmentation"]
    have = cells[cells["in_layout"]].groupby(key, sort=False)["n"].max()
    return have[~(have > 0)].reset_index()[key]


def _missing_parts(cells: pd.DataFrame) -> list:
    missing = missing_cells(cells)
    parts = [("h2", "Cells still missing"),
             ("p", "The paper's cells with no ok seed here, per network and scheme.")]
    for name, layout in paper.LAYOUTS.items():
        mine = missing[missing["table"] == name]
        items = [
            f"{model} {scheme}: " + ", ".join(f"{d} ({a})" for d, a in group[COLUMN].values)
            for (model, scheme), group in mine.groupby(["model", "scheme"], sort=False)
        ]
        parts += [("h3", name), ("ul", items or ["none"])]
        if not layout["complete"]:
            parts.append(("p", f"Only the rows transcribed in analysis/paper.py "
                               f"({', '.join(layout['models'])}) are listed: {name}'s other rows are not "
                               "known here."))
    return parts


# ---- rendering ---------------------------------------------------------------------------------------------


def to_markdown(parts: list) -> str:
    """The figures as links to their PNG files beside the report."""
    lines = []
    for kind, payload in parts:
        if kind in ("h1", "h2", "h3"):
            lines.append("#" * int(kind[1]) + " " + payload)
        elif kind == "p":
            lines.append(payload)
        elif kind == "ul":
            lines.append("\n".join(f"- {item}" for item in payload))
        elif kind == "img":
            lines.append(f"![{payload.stem}]({payload.as_posix()})")
        else:
            table = Table(header=list(payload.columns), align="l" * len(payload.columns))
            for row in payload.itertuples(index=False):
                table.add([" · ".join(v) if isinstance(v, tuple) else str(v) for v in row])
            lines.append(markdown(table).rstrip("\n"))
    return "\n\n".join(lines) + "\n"


def to_html(parts: list, out: Path) -> str:
    """One page: inline CSS, the figures as base64 PNG (read from `out`, where to_markdown links them)."""
    body = []
    for kind, payload in parts:
        if kind in ("h1", "h2", "h3", "p"):
            body.append(f"<{kind}>{html.escape(payload)}</{kind}>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in payload) + "</ul>")
        elif kind == "img":
            data = base64.b64encode((out / payload).read_bytes()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(payload.stem)}">'
                        f"<figcaption>{html.escape(payload.name)}</figcaption></figure>")
        else:
            cells = payload.map(_html_cell).rename(columns=html.escape)
            body.append(cells.to_html(index=False, escape=False, border=0))
    title = html.escape(parts[0][1])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def _html_cell(value) -> str:
    def part(text: str) -> str:
        text = html.escape(text)
        return f'<span class="outside">{text}</span>' if text.endswith(" outside") else text

    return "<br>".join(map(part, value)) if isinstance(value, tuple) else html.escape(str(value))
