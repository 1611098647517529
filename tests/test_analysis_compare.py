"""analysis.compare: paired t and Welch's t checked against their formulas by hand (df = 2, where the t
distribution has a closed form), the paired bootstrap against an independent re-implementation with the
same seed, n too small said plainly, the side specs, the table's versus column and `python -m analysis
compare`."""

import io
import math

import numpy as np
import pandas as pd
import pytest
from test_analysis import grid, trial_rows, write  # noqa: F401  (grid: the 3-seed fixture)

from analysis import AnalysisError, compare, format_comparison, format_table, load_results
from analysis.__main__ import main
from analysis.comparison import BOOTSTRAP_MIN_N, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED


def t2_quantile(q: float) -> float:
    """The q quantile of Student's t with 2 degrees of freedom: (2q − 1) / sqrt(2q(1 − q))."""
    return (2 * q - 1) / math.sqrt(2 * q * (1 - q))


def t2_two_sided_p(t: float) -> float:
    """P(|T| > |t|) for 2 degrees of freedom: 1 − |t| / sqrt(2 + t²)."""
    return 1 - abs(t) / math.sqrt(2 + t * t)


def cells(folder, values: dict, pick_gap=1.0, seeds_planned=3):
    """One trial per (variant, alpha, r, seed): best epoch `value`, final epoch `value + pick_gap`."""
    for (variant, alpha, r), by_seed in values.items():
        for seed, value in by_seed.items():
            rows = trial_rows(
                alpha=alpha,
                r=r,
                seed=seed,
                variant=variant,
                top1=[value + 10, value, value + pick_gap],
                seeds_planned=seeds_planned,
            )
            write(folder, rows)
    return load_results(folder)


GNP = ("gnp", 0.8, 0.05)
STANDARD = ("standard", 0.0, 0.0)


def test_paired_t_matches_its_formula(tmp_path):
    a, b = [17.0, 18.5, 19.0], [20.0, 22.0, 24.0]
    df = cells(tmp_path, {GNP: dict(enumerate(a)), STANDARD: dict(enumerate(b))}, pick_gap=0.0)
    row = compare(df, "GNP", "Standard").iloc[0]
    d = [x - y for x, y in zip(a, b, strict=True)]
    n, mean = len(d), sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    t = mean / (sd / math.sqrt(n))
    half = t2_quantile(0.975) * sd / math.sqrt(n)
    assert (row["test"], row["n"], row["a_n"], row["b_n"]) == ("paired t", 3, 3, 3)
    assert row["diff"] == pytest.approx(mean) and row["a_mean"] == pytest.approx(sum(a) / 3)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((mean - half, mean + half), rel=1e-9)
    assert row["p"] == pytest.approx(t2_two_sided_p(t), rel=1e-9)
    assert math.isnan(row["boot_low"])  # n = 3 < BOOTSTRAP_MIN_N: no bootstrap
    assert row["conclusion"] == "GNP has the lower error (95% interval excludes 0)"


def test_the_default_pick_is_the_final_epoch(tmp_path):
    # best epochs: GNP 10, 11, 12 and Standard 11, 12, 12; GNP's last epoch is 3 worse, Standard's the same
    cells(tmp_path, {GNP: {0: 10.0, 1: 11.0, 2: 12.0}}, pick_gap=3.0)
    df = cells(tmp_path, {STANDARD: {0: 11.0, 1: 12.0, 2: 12.0}}, pick_gap=0.0)
    final, best = compare(df, "GNP", "Standard").iloc[0], compare(df, "GNP", "Standard", pick="best").iloc[0]
    assert final["diff"] == pytest.approx(7 / 3) and best["diff"] == pytest.approx(-2 / 3)
    out = format_comparison(compare(df, "GNP", "Standard"))
    assert "scored at its last epoch (--pick final)" in out and "chosen on the same validation" not in out
    best_text = format_comparison(compare(df, "GNP", "Standard", pick="best"))
    assert "That epoch is chosen on the same validation set" in best_text and "(--pick best)" in best_text


def test_welch_where_the_seeds_are_not_paired(tmp_path):
    a, b = [10.0, 12.0], [13.0, 15.0]  # no common seed; equal variances and n: Welch's df is exactly 2
    df = cells(tmp_path, {GNP: {0: a[0], 1: a[1]}, STANDARD: {5: b[0], 6: b[1]}}, pick_gap=0.0)
    row = compare(df, "GNP", "Standard").iloc[0]
    va, vb = 2.0, 2.0  # sample variances
    se = math.sqrt(va / 2 + vb / 2)
    welch_df = (va / 2 + vb / 2) ** 2 / ((va / 2) ** 2 / 1 + (vb / 2) ** 2 / 1)
    assert welch_df == 2
    diff, half = -3.0, t2_quantile(0.975) * se
    assert (row["test"], row["n"], row["a_n"], row["b_n"]) == ("Welch", 0, 2, 2)
    assert (row["diff"], row["ci_low"], row["ci_high"]) == pytest.approx((diff, diff - half, diff + half))
    assert row["p"] == pytest.approx(t2_two_sided_p(diff / se))
    assert "| 2 + 2 unpaired |" in format_comparison(compare(df, "GNP", "Standard"))


def test_n_too_small_is_said_plainly(tmp_path, capsys):
    df = cells(tmp_path, {GNP: {0: 10.0}, STANDARD: {0: 12.0, 1: 13.0}})
    row = compare(df, "GNP", "Standard").iloc[0]
    assert row["test"] is None and row["n"] == 1 and math.isnan(row["ci_low"]) and math.isnan(row["p"])
    assert row["conclusion"].startswith("n too small to conclude anything (1 common seed(s)")
    assert main(["compare", str(tmp_path), "GNP", "Standard"]) == 0
    out = capsys.readouterr().out
    assert "| 1 common (1 + 2 ok) |" in out and "n too small to conclude anything" in out
    assert "nan" not in out.lower()
    table = format_table(df, versus="Standard")
    assert "| n too small |" in table


def test_the_paired_bootstrap_is_reproducible_and_matches_a_reimplementation(tmp_path):
    a = [15.0, 17.5, 16.0, 18.0, 14.5]
    b = [17.0, 18.0, 19.5, 18.5, 17.0]
    df = cells(tmp_path, {GNP: dict(enumerate(a)), STANDARD: dict(enumerate(b))}, pick_gap=0.0)
    row = compare(df, "GNP", "Standard").iloc[0]
    d = np.array(a) - np.array(b)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = d[rng.integers(0, len(d), (BOOTSTRAP_RESAMPLES, len(d)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    assert len(d) == BOOTSTRAP_MIN_N
    assert (row["boot_low"], row["boot_high"]) == pytest.approx((low, high), rel=1e-12)
    assert d.min() <= row["boot_low"] < d.mean() < row["boot_high"] <= d.max()
    again = compare(df, "GNP", "Standard").iloc[0]
    assert (again["boot_low"], again["boot_high"]) == (row["boot_low"], row["boot_high"])
    fewer = cells(tmp_path / "four", {GNP: dict(enumerate(a[:4])), STANDARD: dict(enumerate(b[:4]))})
    assert math.isnan(compare(fewer, "GNP", "Standard").iloc[0]["boot_low"])


def test_identical_differences_are_not_a_certainty(tmp_path):
    df = cells(tmp_path, {GNP: {0: 10.0, 1: 11.0, 2: 12.0}, STANDARD: {0: 12.0, 1: 13.0, 2: 14.0}})
    row = compare(df, "GNP", "Standard").iloc[0]
    assert row["diff"] == pytest.approx(-2.0) and math.isnan(row["p"]) and math.isnan(row["ci_low"])
    assert row["conclusion"].startswith("every seed gives the same difference (-2.00)")


def test_sides_name_schemes_or_cells(grid):  # noqa: F811
    df = load_results(grid)
    chosen = compare(df, "GNP", "sam", pick="best").iloc[0]  # the scheme table's cells: α 0.8 and r 0.1
    assert (chosen["a_alpha"], chosen["a_r"], chosen["b_alpha"], chosen["b_r"]) == (0.8, 0.05, 1.0, 0.1)
    assert chosen["a_cells"] == 3 and chosen["b_cells"] == 2
    named = compare(df, "gnp:alpha=0.3,r=0.05", {"scheme": "SAM", "r": 0.05}, pick="best").iloc[0]
    assert (named["a_alpha"], named["a_r"], named["b_r"], named["a_cells"]) == (0.3, 0.05, 0.05, 1)
    assert named["diff"] == pytest.approx(26 - 22) and named["a"] == "GNP:alpha=0.3,r=0.05"
    out = format_comparison(compare(df, "GNP", "SAM:r=0.05"))
    assert "GNP: the cell with the lowest mean top-1 on these same data (optimistic)" in out
    for spec, message in (
        ("XYZ", r"no scheme 'XYZ' .* they hold: Standard, GNP, SAM"),
        ("gnp:alpha=0.3,q=1", "unknown key 'q'"),
        ("gnp:alpha=big", "alpha must be a number"),
        ("gnp:alpha", "is not key=value"),
        (3, "a str or dict"),
        ("gnp:alpha=0.4", "no model block holds both"),
    ):
        with pytest.raises(AnalysisError, match=message):
            compare(df, spec, "Standard")
    with pytest.raises(AnalysisError, match="the same cell"):
        compare(df, "SAM:r=0.1", "sam:alpha=1,r=0.1")
    with pytest.raises(AnalysisError, match="metric"):
        compare(df, "GNP", "SAM", metric="top3")


def test_the_scheme_table_marks_intervals_that_exclude_zero(grid):  # noqa: F811
    df = load_results(grid)
    lines = format_table(df, versus="Standard").splitlines()
    assert lines[0].endswith("| Δ top-1 vs Standard |")
    # GNP α 0.8: 17, 18, 19 against 20, 22, 24: d = −3, −4, −5, sd 1, half-width t(0.975, 2) / sqrt(3)
    half = t2_quantile(0.975) / math.sqrt(3)
    assert lines[3].endswith(f"| {-4:+.2f} [{-4 - half:+.2f}, {-4 + half:+.2f}]‡ |")
    assert lines[2].endswith("| – |")  # Standard itself
    assert lines[4].endswith(f"| {-2:+.2f} [{-2 - half:+.2f}, {-2 + half:+.2f}] |")  # SAM: includes 0
    csv = pd.read_csv(io.StringIO(format_table(df, fmt="csv", versus="Standard")))
    assert csv.loc[csv["scheme"] == "GNP", "versus_diff"].item() == -4.0
    with pytest.raises(AnalysisError, match="versus"):
        format_table(df, kind="cells", versus="Standard")


def test_compare_on_the_command_line(grid, capsys):  # noqa: F811
    assert main(["compare", str(grid)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| smallcnn") or line.startswith("|  |")]
    assert len(rows) == 3 and "(--pick final)" in out
    assert rows[0].split(" | ")[2:4] == ["GNP (α 0.8, r 0.05)", "Standard (α 0, r 0)"]
    assert main(["compare", str(grid), "gnp:alpha=0.3,r=0.05", "Standard", "--format", "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert frame["diff"].tolist() == [4.0] and frame["test"].tolist() == ["paired t"]
    assert main(["compare", str(grid), "--format", "latex"]) == 0
    assert capsys.readouterr().out.startswith("% needs \\usepackage{booktabs}")
    for argv, message in (
        (["compare", str(grid), "Nope", "SAM"], "no scheme 'Nope'"),
        (["compare", str(grid), "GNP"], "two sides"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "Traceback" not in err
    with pytest.raises(SystemExit) as done:
        main(["compare", str(grid), "--pick", "median"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and "invalid choice: 'median'" in err
