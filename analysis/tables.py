"""The paper's tables as Markdown, LaTeX (a booktabs tabular) or CSV, and the comparison table.

Five layouts: "schemes" (Table 4: one chosen cell per scheme and model, top-1 and top-5 error, cost beside
accuracy), "datasets" (Tables 1–3: top-1 error per dataset × augmentation), "cells" (every variant, α and r
of the grid), "trials" (every seed, for an appendix) and "karakida" (F-GR, B-GR, GNP, SAM and DB side by
side at matched (α, r), as Karakida et al. compare finite-difference gradient regularization). Markdown and
LaTeX show "mean ± std" with the best per model in bold and notes on how the numbers were chosen and what
was left out; CSV gives the numbers behind the table (mean and std in their own columns) for spreadsheets.
"""

import pandas as pd

from analysis import comparison
from analysis.errors import AnalysisError
from analysis.paper import SOURCE, paper_errors
from analysis.render import DASH, Table, duration, mean_std, number, render
from analysis.summary import (
    BLOCK,
    block_of,
    grid_cost,
    model_rank,
    scheme_rank,
    select_schemes,
    summarize_trials,
    trial_scores,
    with_schemes,
)
from gnp import variants
from gnp.rows import LOST

FORMATS = ("md", "latex", "csv")
KINDS = ("schemes", "datasets", "cells", "trials", "karakida")
KARAKIDA = ("fgr", "bgr", "gnp", "sam", "db")  # the karakida table's columns, in this order


def format_table(
    df: pd.DataFrame, fmt: str = "md", pick: str = "best", kind: str = "schemes", versus=None, paper=False
) -> str:
    """The table of the loaded result rows `df` (see load_results) as text in `fmt` (md, latex or csv).

    `versus` (schemes table only) adds each row's top-1 difference from that side (a scheme such as
    "Standard", or any spec analysis.compare takes) with its 95% interval, marked ‡ where it excludes 0.
    `paper` (schemes and datasets tables) puts the paper's published errors beside ours (analysis.paper).
    """
    if fmt not in FORMATS:
        raise AnalysisError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if kind not in KINDS:
        raise AnalysisError(f"table kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if versus is not None and kind != "schemes":
        raise AnalysisError(f"versus is a column of the schemes table, not of --kind {kind}")
    if paper and kind not in ("schemes", "datasets"):
        raise AnalysisError(f"the paper's numbers go beside the schemes and datasets tables, not --kind {kind}")
    trials = trial_scores(df, pick)
    summary = summarize_trials(trials)
    if kind == "trials":
        frame = trials.sort_values([*block_of(trials), "alpha", "r", "variant", "seed"], ignore_index=True)
    elif kind == "karakida":
        frame = _karakida_cells(summary)
    else:
        frame = summary if kind == "cells" else select_schemes(summary)
    if versus is not None:
        frame = _with_versus(frame, trials, summary, versus)
    if paper:
        frame = _with_paper(frame)
    if fmt == "csv":
        return frame.to_csv(index=False)
    layout = {
        "schemes": _scheme_table,
        "datasets": _dataset_table,
        "cells": _cell_table,
        "trials": _trial_table,
        "karakida": _karakida_table,
    }
    table = layout[kind](frame)
    if versus is not None:
        _add_versus_column(table, frame)
    if paper and kind == "schemes":
        _add_paper_column(table, frame)
    flagged = any("†" in text for row in table.rows for text in row)
    shown = frame if kind == "karakida" else summary  # its notes name only the cells it shows
    table.notes = _notes(shown, trials, pick, kind, flagged, versus is not None) + table.notes
    if paper:
        table.notes.append(f"Paper: the errors {SOURCE} report for the same network, data and scheme (Table 4: "
                           "ImageNet, 3 seeds; Table 1: CIFAR, 5 seeds, means; Tables 2–3, ViT on CIFAR: not "
                           "transcribed); a dash, or a cell without [paper …], where it reports none or its "
                           "row is not transcribed (analysis/paper.py).")
    return render(table, fmt)


# ---- layouts ----------------------------------------------------------------------------------------------


def _scheme_table(frame: pd.DataFrame) -> Table:
    return _per_cell_table(frame, "Scheme", frame["scheme"])


def _cell_table(frame: pd.DataFrame) -> Table:
    return _per_cell_table(frame, "Variant", frame["variant"])


def _per_cell_table(frame: pd.DataFrame, label: str, names: pd.Series) -> Table:
    """One row per selected scheme or grid cell, model and data written once per block, a column for each
    option that varies."""
    block, options = block_of(frame), block_of(frame)[len(BLOCK):]
    header = [
        "Model",
        "Data",
        *options,
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
    ]
    table = Table(header=header, align="ll" + "l" * len(options) + "lrrrrrrrrr")
    bold1, bold5 = (_best_in_block(frame, f"{m}_mean", block) for m in ("test_top1_err", "test_top5_err"))
    previous = None
    for i, row in enumerate(frame.itertuples(index=False)):
        values = tuple(getattr(row, name) for name in block)
        table.add(
            [
                *_block_cells(row, values[:len(BLOCK)] != (previous or ())[:len(BLOCK)]),
                *_option_cells(values[len(BLOCK):], values != previous),
                names.iloc[i],
                number(row.alpha, "g"),
                number(row.r, "g"),
                mean_std(row.test_top1_err_mean, row.test_top1_err_std),
                mean_std(row.test_top5_err_mean, row.test_top5_err_std),
                f"{row.n}/{row.seeds_planned}" + ("†" if row.incomplete else ""),
                str(row.diverged),
                str(row.failed),
                number(row.device_hours, ".3g"),
                number(row.images_per_s, ".0f"),
            ],
            [False] * (5 + len(options)) + [bold1.iloc[i], bold5.iloc[i]] + [False] * 5,
            new_block=values != previous,
        )
        previous = values
    return table


def _karakida_cells(summary: pd.DataFrame) -> pd.DataFrame:
    """The KARAKIDA variants' cells (ok or not) at each model's (α, r) pairs that at least two of them ran."""
    cells = summary[summary["variant"].isin(KARAKIDA)]
    shared = cells.groupby([*block_of(cells), "alpha", "r"])["variant"].transform("nunique") >= 2
    if not shared.any():
        held = [v for v in KARAKIDA if v in set(cells["variant"])]
        if len(held) >= 2:
            why = f"{', '.join(held)}, but never two at one (α, r)"
        else:
            why = f"only {held[0]}" if held else "none of them"
        raise AnalysisError(
            f"--kind karakida compares {', '.join(KARAKIDA)} at the same α and r; these results hold {why}; "
            "run two of them on one grid, e.g. python -m jobs.grid --variant gnp,fgr,bgr --alpha 0.5 --r 0.05"
        )
    return cells[shared]


def _karakida_table(frame: pd.DataFrame) -> Table:
    """A row per model and (α, r), a column per variant: top-1 error at matched (α, r), lowest in bold."""
    block, options = block_of(frame), block_of(frame)[len(BLOCK):]
    held = [v for v in KARAKIDA if v in set(frame["variant"])]
    labels = [f"{variants.REGISTRY[v].label} top-1 (%)" for v in held]
    table = Table(
        header=["Model", "Data", *options, "α", "r", *labels],
        align="ll" + "l" * len(options) + "rr" + "r" * len(held),
    )
    previous = None
    for key, row in frame.groupby([*block, "alpha", "r"]):
        values, cells = key[:len(block)], row.set_index("variant").reindex(held)
        best = cells["test_top1_err_mean"].eq(cells["test_top1_err_mean"].min())
        table.add(
            [
                *_block_cells(row.iloc[0], values[:len(BLOCK)] != (previous or ())[:len(BLOCK)]),
                *_option_cells(values[len(BLOCK):], values != previous),
                number(key[-2], "g"),
                number(key[-1], "g"),
                *(_karakida_cell(cell) for cell in cells.itertuples()),
            ],
            [False] * (4 + len(options)) + list(best),
            new_block=values != previous,
        )
        previous = values
    table.notes.append(
        "Every column runs the row's α and r (Karakida et al., ICML 2023): FGR and BGR, the forward and "
        "backward finite differences, at ε = r and γ = α·r (θ ± r·g1); GNP and SAM step to θ + r·g1/‖g1‖; DB "
        "is the exact gradient of L + α·r·‖∇L‖ by double backprop. A dash: that variant has no cell there."
    )
    return table


def _karakida_cell(cell) -> str:
    if pd.isna(cell.n):  # the variant did not run at this (α, r)
        return DASH
    lost = "".join(f", {getattr(cell, s):g} {s}" for s in LOST if getattr(cell, s))
    return f"{mean_std(cell.test_top1_err_mean, cell.test_top1_err_std)} (n = {cell.n:g}{lost})"


def _option_cells(values: tuple, first: bool) -> list[str]:
    return list(values) if first else [""] * len(values)


def _trial_table(frame: pd.DataFrame) -> Table:
    """One row per trial (seed): the per-seed numbers behind every mean."""
    block, options = block_of(frame), block_of(frame)[len(BLOCK):]
    header = ["Model", "Data", *options, "Variant", "α", "r", "Seed", "Status", "Epoch", "Top-1 err (%)",
              "Top-5 err (%)", "Device-h"]  # fmt: skip
    table = Table(header=header, align="ll" + "l" * len(options) + "lrrrlrrrr")
    previous = None
    for row in frame.itertuples(index=False):
        values = tuple(getattr(row, name) for name in block)
        table.add(
            [
                *_block_cells(row, values[:len(BLOCK)] != (previous or ())[:len(BLOCK)]),
                *_option_cells(values[len(BLOCK):], values != previous),
                row.variant,
                number(row.alpha, "g"),
                number(row.r, "g"),
                str(row.seed),
                row.status,
                str(row.scored_epoch),
                number(row.test_top1_err, ".2f"),
                number(row.test_top5_err, ".2f"),
                number(row.device_hours, ".3g"),
            ],
            new_block=values != previous,
        )
        previous = values
    return table


def _block_cells(row, first: bool) -> list[str]:
    return [row.model, f"{row.dataset} ({row.augmentation})"] if first else ["", ""]


def _dataset_table(frame: pd.DataFrame) -> Table:
    """Tables 1–3: rows model × scheme (× every option that varies within a column), a column of top-1 error
    per dataset × augmentation, the chosen α and r in each cell. An option each column sets once per model
    (ViT's heavy recipe: more epochs, another weight decay) is no row of its own, or basic and heavy would
    never share a row; a note names it."""
    columns = ["dataset", "augmentation"]
    options, per_column = _split_options(frame, ["model", *columns])
    rows = ["model", *options, "scheme"]
    if frame.duplicated(rows + columns).any():
        raise AnalysisError(
            "two recipes train the same model on the same dataset and augmentation; filter the rows to one "
            "recipe (df[df.recipe == ...]) or use the schemes table"
        )
    cells = frame.assign(
        text=[_dataset_cell(row) for row in frame.itertuples(index=False)],
        bold=_best_in_block(frame, "test_top1_err_mean", ["model", *options, *columns]),
    )
    by_model = frame[rows].drop_duplicates().sort_values("model", key=lambda m: m.map(model_rank),
                                                         kind="stable")
    order = dict(
        index=pd.MultiIndex.from_frame(by_model),
        columns=pd.MultiIndex.from_frame(frame[columns].drop_duplicates()),
    )
    text = cells.pivot(index=rows, columns=columns, values="text").reindex(**order).fillna(DASH)
    bold = cells.pivot(index=rows, columns=columns, values="bold").reindex(**order).fillna(False)
    table = Table(
        header=["Model", *options, "Scheme", *(f"{d} ({a}) top-1 err (%)" for d, a in text.columns)],
        align="l" * (2 + len(options)) + "r" * len(text.columns),
    )
    keys = list(text.index)
    for i, (key, values) in enumerate(text.iterrows()):
        first = i == 0 or keys[i - 1][:-1] != key[:-1]
        model_first = i == 0 or keys[i - 1][0] != key[0]
        labels = [key[0] if model_first else "", *(key[1:-1] if first else [""] * len(options)), key[-1]]
        table.add([*labels, *values], [False] * len(labels) + list(map(bool, bold.iloc[i])), first)
    if per_column:
        table.notes.append(f"Set once per model and column, so no rows of their own: {', '.join(per_column)} "
                           "(--kind schemes shows their values).")
    return table


def _split_options(frame: pd.DataFrame, column: list[str]) -> tuple[list[str], list[str]]:
    """The block's options that vary within a model's column (rows of their own), and those that do not."""
    options = block_of(frame)[len(BLOCK):]
    once = [o for o in options if frame.groupby(column)[o].nunique(dropna=False).eq(1).all()]
    return [o for o in options if o not in once], once


def _dataset_cell(row) -> str:
    text = mean_std(row.test_top1_err_mean, row.test_top1_err_std) + ("†" if row.incomplete else "")
    if row.scheme != "Standard" and pd.notna(row.alpha):
        text += f" (α {row.alpha:g}, r {row.r:g})"
    if "paper_top1_err" in row._fields and pd.notna(row.paper_top1_err):
        text += f" [paper {row.paper_top1_err:.2f}]"
    return text


# ---- the paper's numbers --------------------------------------------------------------------------------


def _with_paper(frame: pd.DataFrame) -> pd.DataFrame:
    values = [paper_errors(r.model, r.dataset, r.augmentation, r.scheme) for r in frame.itertuples(index=False)]
    columns = ["paper_top1_err", "paper_top1_std", "paper_top5_err", "paper_top5_std"]
    return frame.assign(**{c: [v[i] for v in values] for i, c in enumerate(columns)})


def _add_paper_column(table: Table, frame: pd.DataFrame) -> None:
    table.header.append("Paper top-1 / top-5 (%)")
    table.align += "r"
    for cells, bold, row in zip(table.rows, table.bold, frame.itertuples(index=False), strict=True):
        known = pd.notna(row.paper_top1_err)
        top5 = f" / {mean_std(row.paper_top5_err, row.paper_top5_std)}" if pd.notna(row.paper_top5_err) else ""
        cells.append(mean_std(row.paper_top1_err, row.paper_top1_std) + top5 if known else DASH)
        bold.append(False)


def _best_in_block(frame: pd.DataFrame, column: str, block: list[str]) -> pd.Series:
    """True where the value is the block's lowest (ties all bold); never for a missing value."""
    return frame[column].eq(frame.groupby(block)[column].transform("min")) & frame[column].notna()


# ---- the versus column ------------------------------------------------------------------------------------

_VERSUS = ["test", "n", "diff", "ci_low", "ci_high", "p"]


def _with_versus(frame: pd.DataFrame, trials: pd.DataFrame, summary: pd.DataFrame, versus) -> pd.DataFrame:
    """The schemes table with versus_* columns: each row's top-1 difference from the `versus` side."""
    cells = with_schemes(summary)
    reference = comparison.parse_side(versus, set(cells["scheme"]))
    found = []
    for scheme in sorted(set(frame["scheme"]) - {reference.scheme}, key=scheme_rank):
        try:
            found.append(
                comparison.compare_cells(trials, cells, comparison.Side(scheme), reference, "test_top1_err")
            )
        except AnalysisError:  # no block holds both: the row keeps empty versus columns
            continue
    block = block_of(frame)
    columns = [*block, "a", *_VERSUS]
    rows = pd.concat(found) if found else pd.DataFrame(columns=columns)
    rows = rows[columns].rename(columns={"a": "scheme", **{c: f"versus_{c}" for c in _VERSUS}})
    return frame.merge(rows, on=[*block, "scheme"], how="left").assign(versus=str(reference))


def _add_versus_column(table: Table, frame: pd.DataFrame) -> None:
    table.header.append(f"Δ top-1 vs {frame['versus'].iloc[0]}")
    table.align += "r"
    for cells, bold, row in zip(table.rows, table.bold, frame.itertuples(index=False), strict=True):
        cells.append(_versus_text(row))
        bold.append(False)


def _versus_text(row) -> str:
    if pd.isna(row.versus_n):  # the reference itself, or a model without it
        return DASH
    if pd.isna(row.versus_test):
        return "n too small"
    if pd.isna(row.versus_ci_low):
        return f"{row.versus_diff:+.2f} (no spread)"
    excludes = row.versus_ci_low > 0 or row.versus_ci_high < 0
    return f"{row.versus_diff:+.2f} [{row.versus_ci_low:+.2f}, {row.versus_ci_high:+.2f}]" + "‡" * excludes


# ---- notes ------------------------------------------------------------------------------------------------


def _notes(
    summary: pd.DataFrame, trials: pd.DataFrame, pick: str, kind: str, flagged: bool, versus: bool
) -> list[str]:
    notes = [_scoring_note(pick, kind)]
    selection = _selection_note(pick, kind)
    if selection:
        notes.append(selection)
    if flagged:
        notes.append("† fewer ok seeds than planned (stopped, diverged, failed or missing trials).")
    if versus:
        notes.append(
            "Δ top-1: the row's cell minus the reference's, mean over the seeds both have with its 95% paired-t "
            "interval (Welch's t where they share fewer than 2 seeds); ‡ the interval excludes 0. "
            "python -m analysis compare gives the p-values and a bootstrap."
        )
    bad = summary[(summary[list(LOST)] > 0).any(axis=1)]
    if len(bad) and kind != "trials":
        notes.append(
            "Not averaged in: "
            + "; ".join(
                f"{row.model}/{row.dataset} {row.variant} α={row.alpha:g} r={row.r:g}: "
                + ", ".join(
                    f"{getattr(row, status)} {status}" for status in LOST if getattr(row, status)
                )
                for row in bad.itertuples(index=False)
            )
            + "."
            + (" Stopped: a search trial ASHA ended early (--asha)." if bad["stopped"].any() else "")
        )
    notes.append(_cost_note(trials, kind))
    return notes


def _scoring_note(pick: str, kind: str) -> str:
    if kind == "trials":
        return f"Test error in % of each trial (seed), scored at {_scored_at(pick)} (column Epoch; --pick {pick})."
    best = "lowest in each row, at matched (α, r)" if kind == "karakida" else "best per model"
    return (
        f"Test error in %, mean ± sample std over the ok seeds, each trial scored at {_scored_at(pick)} "
        f"(--pick {pick}); bold: {best}."
    )


def _scored_at(pick: str) -> str:
    if pick == "best":
        return "the epoch of its lowest test top-1 error, top-5 at that same epoch"
    if pick == "holdout":
        return "the epoch of its lowest error on its held-out training images"
    return "its last epoch"


def _selection_note(pick: str, kind: str) -> str:
    """Say what was chosen on the data that is reported, and how to avoid it."""
    text, chosen = "", []
    if kind in ("schemes", "datasets"):
        text = "One chosen cell per scheme and model, the α and r of lowest mean top-1 (all cells: --kind cells). "
    if pick == "best":
        chosen.append("each trial's epoch (--pick final takes the last)")
    if kind in ("schemes", "datasets"):
        chosen.append("each scheme's α and r (python -m analysis compare tests cells named in advance)")
    if pick == "holdout":
        return text + ("Chosen on held-out training images (--holdout-images), never on the test set these "
                       "errors are measured on: each trial's epoch" + (" and each scheme's α and r" if kind in (
                           "schemes", "datasets") else "") + ".")
    if chosen:
        text += (
            "Chosen on the same validation set these errors are measured on, so the errors are optimistic: "
            + " and ".join(chosen)
            + "."
        )
    return text.strip()


def _cost_note(trials: pd.DataFrame, kind: str) -> str:
    cost = grid_cost(trials)
    per_trial = {
        "trials": "Device-h: the trial's epochs' wall time × workers. ",
        "cells": "Device-h/trial: a trial's epochs' wall time × workers, mean over the ok seeds. ",
        "schemes": "Device-h/trial: a trial's epochs' wall time × workers, mean over the ok seeds. ",
    }.get(kind, "")
    text = (
        f"{per_trial}The grid: {cost.trials} trials, {cost.device_hours:.3g} device-hours in all "
        "(ok, stopped, diverged and failed)"
    )
    if cost.ray_known == 0:
        return text + "; Ray's own wall time (starting worker groups, checkpoints) is not in these files."
    share = "" if cost.ray_known == cost.trials else f" (the {cost.ray_known} trials that record it)"
    return text + f"; Ray added {duration(cost.ray_wall_s)} of wall time beyond the epochs{share}."


# ---- the comparison table ---------------------------------------------------------------------------------


def format_comparison(result: pd.DataFrame, fmt: str = "md") -> str:
    """compare()'s rows (one or more comparisons, concatenated) as a table with notes, or CSV."""
    if fmt not in FORMATS:
        raise AnalysisError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "csv":
        return result.to_csv(index=False)
    metric = "top-1" if result["metric"].iloc[0] == "test_top1_err" else "top-5"
    table = Table(
        header=[
            "Model",
            "Data",
            "A",
            "B",
            "Seeds",
            "A err (%)",
            "B err (%)",
            f"A − B ({metric}, points)",
            "95% CI (t)",
            "p",
            "95% CI (bootstrap)",
            "Conclusion",
        ],  # fmt: skip
        align="llllrrrrrrrl",
    )
    previous, block = None, block_of(result)
    options = block[len(BLOCK):]
    table.header[2:2] = options
    table.align = table.align[:2] + "l" * len(options) + table.align[2:]
    for row in result.itertuples(index=False):
        values = tuple(getattr(row, name) for name in block)
        table.add(
            [
                *_block_cells(row, values[:len(BLOCK)] != (previous or ())[:len(BLOCK)]),
                *_option_cells(values[len(BLOCK):], values != previous),
                _side(row.a, row.a_alpha, row.a_r),
                _side(row.b, row.b_alpha, row.b_r),
                _seed_count(row),
                number(row.a_mean, ".2f"),
                number(row.b_mean, ".2f"),
                number(row.diff, "+.2f"),
                _interval(row.ci_low, row.ci_high),
                _p_value(row.p),
                _interval(row.boot_low, row.boot_high),
                row.conclusion,
            ],
            new_block=values != previous,
        )
        previous = values
    table.notes = _comparison_notes(result)
    return render(table, fmt)


def _side(spec: str, alpha: float, r: float) -> str:
    return f"{spec.split(':')[0]} (α {alpha:g}, r {r:g})"


def _seed_count(row) -> str:
    if row.test == "Welch":
        return f"{row.a_n} + {row.b_n} unpaired"
    if row.test == "paired t":
        return f"{row.n} paired"
    return f"{row.n} common ({row.a_n} + {row.b_n} ok)"


def _interval(low: float, high: float) -> str:
    return DASH if pd.isna(low) else f"[{low:+.2f}, {high:+.2f}]"


def _p_value(p: float) -> str:
    return DASH if pd.isna(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _comparison_notes(result: pd.DataFrame) -> list[str]:
    pick = result["pick"].iloc[0]
    notes = [
        "A − B: mean difference in test error (percentage points; negative: A lower) over the seeds both "
        "cells have, with scipy's paired t (Welch's t on all ok seeds where they share fewer than 2). "
        f"Bootstrap: percentile interval of {comparison.BOOTSTRAP_RESAMPLES} paired resamples (seed "
        f"{comparison.BOOTSTRAP_SEED}), from n = {comparison.BOOTSTRAP_MIN_N} paired seeds on.",
        f"Each trial is scored at {_scored_at(pick)} (--pick {pick}).",
    ]
    if pick == "best":
        notes.append(
            "That epoch is chosen on the same validation set that is tested: --pick final avoids it."
        )
    chosen = sorted(set(result.loc[result["a_cells"] > 1, "a"]) | set(result.loc[result["b_cells"] > 1, "b"]))
    if chosen:
        notes.append(
            f"{', '.join(chosen)}: the cell with the lowest mean top-1 on these same data (optimistic); "
            "name α and r (e.g. gnp:alpha=0.3,r=0.05) to test a cell fixed in advance."
        )
    if result["test"].isna().any():
        notes.append("n too small: fewer than 2 seeds to compare; nothing can be concluded from those rows.")
    return notes
