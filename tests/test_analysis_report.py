"""analysis reports: schemes from the variant registry (unknown variants kept), one scoring epoch per trial,
notes that say what was chosen on the reported data, the per-seed export, the grid's cost with Ray's wall
time (and old files without that column), and figures: every registry variant, 95% intervals, the (α, r)
heatmap, one colour per scheme that reads on white, integer epochs and titles that say model, pick and n."""

import io

import pandas as pd
from test_analysis import BLOCK, grid, trial_rows, write  # noqa: F401  (grid: the 3-seed fixture)

from analysis import (
    format_table,
    load_results,
    scheme_of,
    trial_scores,
)
from analysis.summary import SCHEMES
from gnp import variants

T2 = 4.302652729911275  # Student's t, 0.975 quantile, 2 degrees of freedom

# ---- the variant registry -----------------------------------------------------------------------------------


def test_schemes_and_the_alpha_figure_come_from_the_registry():
    assert SCHEMES == tuple(v.label for v in variants.REGISTRY.values())
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
