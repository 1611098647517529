"""analysis reports: schemes from the variant registry (unknown variants kept), one scoring epoch per trial,
notes that say what was chosen on the reported data, the per-seed export, the grid's cost with Ray's wall
time, and figures: every registry variant, 95% intervals, the (α, r) heatmap, one colour per scheme that
reads on white, integer epochs and titles that say model, pick and n."""

import io
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from test_analysis import BLOCK, grid, trial_rows, write  # noqa: F401  (grid: the 3-seed fixture)

from analysis import (
    format_table,
    load_results,
    make_figures,
    scheme_of,
    summarize,
    trial_scores,
)
from analysis.__main__ import main
from analysis.figures import FAMILY, alpha_figure, epoch_figure
from analysis.heatmap import heatmap_figure
from analysis.style import COLORS, block_title
from analysis.summary import SCHEMES
from gnp import variants

T2 = 4.302652729911275  # Student's t, 0.975 quantile, 2 degrees of freedom

# ---- the variant registry -----------------------------------------------------------------------------------


def test_schemes_and_the_alpha_figure_come_from_the_registry():
    assert SCHEMES == tuple(v.label for v in variants.REGISTRY.values())
    assert FAMILY == tuple(name for name, v in variants.REGISTRY.items() if v.in_alpha_figure)
    for name, alpha in (("gnp", 0.3), ("gnp", 1.0), ("gnp", 1.5), ("fgr", 0.0), ("asam", 0.5), ("foo", 0.5)):
        assert scheme_of(name, alpha) == variants.scheme_label(name, alpha)
    assert (scheme_of("asam", 0.5), scheme_of("foo", 0.5), scheme_of("gnp", 1.5)) == ("ASAM", "foo", None)


def test_an_unknown_variant_keeps_its_own_row_after_the_registry_schemes(grid):  # noqa: F811
    for seed in range(2):
        write(grid, trial_rows(alpha=0.5, r=0.05, seed=seed, top1=[30, 21 + seed], variant="foo"))
        write(grid, trial_rows(alpha=0.5, r=0.05, seed=seed, top1=[30, 19 + seed], variant="fgr"))
    lines = format_table(load_results(grid)).splitlines()
    schemes = [line.split(" | ")[2] for line in lines[2:7]]
    assert schemes == ["Standard", "GNP", "SAM", "FGR", "foo"]
    assert lines[6].startswith("|  |  | foo | 0.5 | 0.05 | 21.50 ± 0.71 |")


# ---- one epoch per trial, and what was chosen -------------------------------------------------------------


def test_top5_is_taken_at_the_epoch_of_the_best_top1(tmp_path):
    # top-1 is best at epoch 2 (ties with epoch 4: the earlier); top-5 is best at epoch 3
    write(tmp_path, trial_rows(alpha=0, r=0, seed=0, top1=[30, 10, 12, 10], top5=[9, 5, 1, 4]))
    best = trial_scores(load_results(tmp_path)).iloc[0]
    assert (best["scored_epoch"], best["test_top1_err"], best["test_top5_err"]) == (2, 10, 5)
    final = trial_scores(load_results(tmp_path), pick="final").iloc[0]
    assert (final["scored_epoch"], final["test_top1_err"], final["test_top5_err"]) == (4, 10, 4)


def test_every_table_says_what_was_chosen_on_the_reported_data(grid):  # noqa: F811
    df = load_results(grid)
    schemes = format_table(df)
    assert "One chosen cell per scheme and model" in schemes and "--kind cells" in schemes
    assert "top-5 at that same epoch" in schemes
    assert "Chosen on the same validation set these errors are measured on" in schemes
    assert "each trial's epoch (--pick final takes the last) and each scheme's α and r" in schemes
    final = format_table(df, pick="final")
    assert "each trial's epoch" not in final and "each scheme's α and r" in final
    assert "Chosen on" in format_table(df, kind="datasets", pick="final")
    assert "Chosen on" in format_table(df, kind="cells") and "Chosen on" not in format_table(
        df, kind="cells", pick="final"
    )
    comments = [line for line in format_table(df, fmt="latex").splitlines() if line.startswith("% ")]
    assert any("Chosen on the same validation set" in line for line in comments)


# ---- the per-seed export ------------------------------------------------------------------------------------


def test_the_trials_table_has_every_seed_in_md_latex_and_csv(grid):  # noqa: F811
    df = load_results(grid)
    md = format_table(df, kind="trials")
    rows = [line for line in md.splitlines() if line.startswith("| smallcnn") or line.startswith("|  |")]
    assert len(rows) == 20 and md.splitlines()[0].startswith(
        "| Model | Data | Variant | α | r | Seed | Status |"
    )
    assert rows[0] == "| smallcnn | digits (crop) | standard | 0 | 0 | 0 | ok | 2 | 20.00 | 5.00 | 0.0167 |"
    assert "|  |  | gnp | 0.5 | 0.1 | 1 | diverged |" in md
    csv = pd.read_csv(io.StringIO(format_table(df, kind="trials", fmt="csv")))
    assert len(csv) == 20 and {"seed", "status", "scored_epoch", "test_top1_err"} <= set(csv.columns)
    assert csv.loc[(csv["alpha"] == 0.8) & (csv["seed"] == 2), "test_top5_err"].item() == 3
    tex = format_table(df, kind="trials", fmt="latex")
    assert sum(line.endswith(r"\\") for line in tex.splitlines()) == 1 + 20


# ---- cost ---------------------------------------------------------------------------------------------------


def test_the_grid_cost_and_the_wall_time_ray_added(tmp_path):
    for seed in range(2):  # 3 epochs × 10 s each; the trial took 50 s: Ray added 20 s
        write(
            tmp_path, trial_rows(alpha=0, r=0, seed=seed, top1=[3, 2, 1], trial_wall_s=50.0, seeds_planned=2)
        )
    write(tmp_path, trial_rows(alpha=1, r=0.05, seed=0, top1=[3, 2], trial_wall_s=None, seeds_planned=2))
    text = format_table(load_results(tmp_path))
    assert "Device-h/trial: a trial's epochs' wall time × workers, mean over the ok seeds." in text
    total = (2 * 3 + 2) * 10 * 2 / 3600
    assert f"The grid: 3 trials, {total:.3g} device-hours in all" in text
    assert "Ray added 40 s of wall time beyond the epochs (the 2 trials that record it)." in text


# ---- figures ------------------------------------------------------------------------------------------------


@pytest.fixture
def study(tmp_path):
    """3 seeds × standard, GNP α {0.5} × r {0.05, 0.1}, SAM at both r, F-GR α 0.5 r 0.05 and DB α 0.5."""
    values = {
        ("standard", 0.0, 0.0): [20, 22, 24],
        ("gnp", 0.5, 0.05): [17, 18, 19],
        ("gnp", 0.5, 0.1): [16, 18, 20],
        ("sam", 1.0, 0.05): [19, 20, 21],
        ("sam", 1.0, 0.1): [18, 20, 22],
        ("fgr", 0.5, 0.05): [18, 19, 20],
        ("db", 0.5, 0.05): [10, 10, 10],
    }
    for (variant, alpha, r), bests in values.items():
        for seed, best in enumerate(bests):
            write(
                tmp_path,
                trial_rows(alpha=alpha, r=r, seed=seed, top1=[best + 5, best + 1, best], variant=variant),
            )
    return summarize(load_results(tmp_path)), load_results(tmp_path), tmp_path


def test_the_alpha_figure_draws_every_registry_variant_with_95_intervals(study):
    summary, _, _ = study
    figure = alpha_figure(summary[summary["variant"].isin(FAMILY)], "title", "best")
    ax = figure.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert {"GNP, r = 0.05", "GNP, r = 0.1", "FGR, r = 0.05", "Standard (α = 0)", "SAM (α = 1)"} == set(
        labels
    )
    assert not any("DB" in label for label in labels)  # in_alpha_figure=False
    bars = {c.get_label(): c for c in ax.containers}
    fgr, gnp = bars["FGR, r = 0.05"], bars["GNP, r = 0.05"]
    assert to_rgb(fgr.lines[0].get_color()) == to_rgb(COLORS["FGR"]) != to_rgb(COLORS["GNP"])
    assert to_rgb(gnp.lines[0].get_color()) == to_rgb(COLORS["GNP"])
    # the standard point (std 2, n 3) carries a 95% t interval, not ± std
    standard = min(gnp.lines[2][0].get_segments(), key=lambda segment: segment[0, 0])  # α = 0
    assert (standard[1, 1] - standard[0, 1]) / 2 == pytest.approx(T2 * 2 / math.sqrt(3))
    assert "bars: 95% t-interval of the mean over seeds" in figure.get_suptitle()


def test_the_heatmap_shows_the_alpha_r_grid_with_standard_and_sam(study):
    summary, _, _ = study
    cells = summary[summary["variant"].isin(FAMILY)]
    figure = heatmap_figure(cells, "title")
    gnp, fgr = figure.axes[0], figure.axes[1]
    assert (gnp.get_title(), fgr.get_title()) == ("GNP", "FGR")
    # rows r 0.05, 0.1; columns α 0 (standard fills the column), 0.5, 1 (SAM)
    expected = np.array([[22, 18, 20], [22, 18, 20]], dtype=float)
    assert np.array_equal(gnp.images[0].get_array().filled(np.nan), expected)
    assert [t.get_text() for t in gnp.get_xticklabels()] == ["0\nStandard", "0.5", "1\nSAM"]
    assert "18.00" in [t.get_text() for t in gnp.texts]
    assert np.array_equal(fgr.images[0].get_array().filled(np.nan), [[22.0, 19.0]])
    assert [t.get_text() for t in fgr.get_xticklabels()] == ["0\nStandard", "0.5"]


def test_every_scheme_colour_reads_on_white():
    def luminance(color):
        channel = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in to_rgb(color)]
        return 0.2126 * channel[0] + 0.7152 * channel[1] + 0.0722 * channel[2]

    assert set(SCHEMES) <= set(COLORS) and len(set(COLORS.values())) == len(COLORS)
    for label, color in COLORS.items():
        assert 1.05 / (luminance(color) + 0.05) >= 4.5, label  # WCAG contrast against white


def test_epoch_figure_has_integer_ticks_and_scheme_colours(study):
    _, df, _ = study
    figure = epoch_figure(df[df["variant"].isin(FAMILY)], "title")
    figure.canvas.draw()
    for ax in figure.axes[:2]:
        assert all(float(t).is_integer() for t in ax.get_xticks())
    lines = {line.get_label(): line for line in figure.axes[1].get_lines()}
    assert to_rgb(lines["SAM α = 1, r = 0.05"].get_color()) == to_rgb(COLORS["SAM"])
    assert to_rgb(lines["FGR α = 0.5, r = 0.05"].get_color()) == to_rgb(COLORS["FGR"])


def test_titles_say_model_data_pick_and_n(study, tmp_path):
    _, df, _ = study
    names = ["recipe", "model", "dataset", "augmentation"]
    block = tuple(BLOCK[k] for k in names)
    assert block_title(block, "final", pd.Series([3, 3]), names) == (
        "smallcnn on digits (crop), recipe digits · final epoch per trial · n = 3 seeds"
    )
    assert block_title(block, "best", pd.Series([1, 3]), names).endswith(
        "best epoch (lowest top-1) per trial · n = 1–3 seeds per point"
    )
    assert block_title((*block, "official"), "best", pd.Series([2]), [*names, "mix"]).startswith(
        "smallcnn on digits (crop), recipe digits, mix = official · ")
    paths = make_figures(df, tmp_path / "fig", pick="final")
    assert sorted({p.name.split("-")[0] for p in paths}) == ["alpha", "epochs", "fig2", "heatmap"]


def test_the_figures_command_takes_pick(study, tmp_path, capsys):
    _, _, folder = study
    assert main(["figures", str(folder), "--out", str(tmp_path / "fig"), "--pick", "final"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 8


def test_the_heatmap_puts_standard_under_alpha_0_when_alpha_goes_below(tmp_path):
    for variant, alpha, r, best in (("standard", 0, 0, 22), ("gnp", -0.5, 0.05, 30), ("gnp", 0.5, 0.05, 18)):
        write(tmp_path, trial_rows(alpha=alpha, r=r, seed=0, top1=[best + 1, best], variant=variant))
    figure = heatmap_figure(summarize(load_results(tmp_path)), "title")
    ax = figure.axes[0]
    assert np.array_equal(ax.images[0].get_array().filled(np.nan), [[30.0, 22.0, 18.0]])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["-0.5", "0\nStandard", "0.5"]
