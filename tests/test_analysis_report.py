"""analysis reports: schemes from the variant registry (unknown variants kept), one scoring epoch per trial,
notes that say what was chosen on the reported data, the per-seed export, the grid's cost with Ray's wall
time (and old files without that column), and figures: every registry variant, 95% intervals, the (α, r)
heatmap, one colour per scheme that reads on white, integer epochs and titles that say model, pick and n."""

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
