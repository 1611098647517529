"""The paper's Figure 2 (error vs α, a panel per r, a line per augmentation, standard and SAM marked, diverged
cells shown), Figure 3 (α > 1 per epoch against the best α in [0, 1]) and the Karakida table (F-GR, B-GR,
GNP, SAM and DB at matched (α, r)), on hand-made results with known values."""

import io
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from test_analysis import trial_rows, write

from analysis import AnalysisError, format_table, load_results, summarize
from analysis.__main__ import main
from analysis.figures import DIVERGED, FAMILY, growth_figure, paper_alpha_figure
from analysis.style import COLORS

T1 = 12.706204736174707  # Student's t, 0.975 quantile, 1 degree of freedom

# (variant, α, r): {augmentation: each seed's best = final top-1 error; None: the seed diverged}
BESTS = {
    ("standard", 0.0, 0.0): {"basic": [20, 22], "cutout": [16, 18]},
    ("gnp", -0.1, 0.05): {"basic": [None, None], "cutout": [18, 18]},
    ("gnp", -0.1, 0.1): {"basic": [22, 22], "cutout": [19, 19]},
    ("gnp", 0.5, 0.05): {"basic": [17, 19], "cutout": [14, 16]},
    ("gnp", 0.5, 0.1): {"basic": [18.5, 18.5], "cutout": [15, 15]},
    ("sam", 1.0, 0.05): {"basic": [19, 21], "cutout": [16, 16]},
    ("sam", 1.0, 0.1): {"basic": [20, 20], "cutout": [17, 17]},
    ("gnp", 1.5, 0.05): {"basic": [25, None], "cutout": [21, 21]},
    ("gnp", 1.5, 0.1): {"basic": [26, 26], "cutout": [22, 22]},
}
# the α = 1.5, r = 0.05 basic seeds' ‖∇L‖ per epoch: seed 1 diverged in epoch 2, its norm already huge
NORMS = {0: [4.0, 8.0], 1: [6.0, 1000.0]}


@pytest.fixture
def paper(tmp_path):
    """2 seeds × augmentations basic and cutout × r {0.05, 0.1} × α {−0.1, 0 (standard), 0.5, 1 (SAM),
    1.5}, 2 epochs each, best at the last; basic α −0.1 r 0.05 diverged for every seed, basic α 1.5 r 0.05
    for one. GNP α 0.8 r 0.05 (basic) is best at epoch 1 (10) but ends at 19: the lowest best-epoch error,
    not the lowest final one."""
    folder = tmp_path / "results" / "paper"
    for (variant, alpha, r), per_augmentation in BESTS.items():
        for augmentation, bests in per_augmentation.items():
            for seed, best in enumerate(bests):
                top1 = [30, math.nan] if best is None else [best + 5, best]
                rows = trial_rows(alpha=alpha, r=r, seed=seed, top1=top1, variant=variant, seeds_planned=2,
                                  augmentation=augmentation, status="diverged" if best is None else None)
                if (alpha, r, augmentation) == (1.5, 0.05, "basic"):
                    for row, norm in zip(rows, NORMS[seed], strict=True):
                        row["grad_norm"] = norm
                write(folder, rows)
    for seed in range(2):
        rows = trial_rows(alpha=0.8, r=0.05, seed=seed, top1=[10, 19], seeds_planned=2, augmentation="basic")
        write(folder, rows)
    return folder


def panel_lines(ax, label: str) -> list:
    return [line for line in ax.get_lines() if line.get_label() == label]


# ---- files -------------------------------------------------------------------------------------------------


def test_the_figures_command_writes_figures_2_and_3_as_png_and_pdf(paper, tmp_path, capsys):
    assert main(["figures", str(paper), "--out", str(tmp_path / "fig")]) == 0
    paths = [Path(line) for line in capsys.readouterr().out.splitlines()]
    names = {p.name for p in paths}
    for stem in ("fig2-digits-smallcnn", "fig3-digits-smallcnn-basic", "fig3-digits-smallcnn-cutout"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
    assert {p.name.split("-")[0] for p in paths} == {"alpha", "heatmap", "epochs", "fig2", "fig3"}
    for path in paths:
        assert path.stat().st_size > 1000 and path.read_bytes()[:4] in (b"\x89PNG", b"%PDF")


# ---- Figure 2 ----------------------------------------------------------------------------------------------


@pytest.fixture
def figure2(paper):
    summary = summarize(load_results(paper))
    return paper_alpha_figure(summary[summary["variant"].isin(FAMILY)], "title")


def test_figure_2_has_a_panel_per_r_and_a_line_per_augmentation(figure2):
    narrow, wide = figure2.axes
    assert (narrow.get_title(), wide.get_title()) == ("r = 0.05", "r = 0.1")
    for ax in (narrow, wide):
        assert sorted(c.get_label() for c in ax.containers) == ["basic", "cutout"]
    lines = {c.get_label(): c.lines[0] for c in narrow.containers}
    # basic: standard, then α 0.5, 0.8 (its best epoch), SAM and α 1.5; α −0.1 diverged: not on the line
    assert list(lines["basic"].get_xdata()) == pytest.approx([0, 0.5, 0.8, 1, 1.5], abs=0.05)
    assert list(lines["basic"].get_ydata()) == [21, 18, 10, 20, 25]
    assert list(lines["cutout"].get_xdata()) == pytest.approx([-0.1, 0, 0.5, 1, 1.5], abs=0.05)
    assert list(lines["cutout"].get_ydata()) == [18, 17, 15, 16, 21]
    assert to_rgb(lines["basic"].get_color()) != to_rgb(lines["cutout"].get_color())
    # standard's 95% t interval (std √2 over 2 seeds), not ± std
    basic = next(c for c in narrow.containers if c.get_label() == "basic")
    standard = min(basic.lines[2][0].get_segments(), key=lambda segment: segment[0, 0])
    assert (standard[1, 1] - standard[0, 1]) / 2 == pytest.approx(T1)
    legend = [t.get_text() for t in figure2.legends[0].get_texts()]
    assert {"basic", "cutout", "Standard (α = 0)", "SAM (α = 1)", DIVERGED} <= set(legend)


def test_figure_2_marks_standard_and_sam_on_every_line(figure2):
    for ax, sam in zip(figure2.axes, ([20, 16], [20, 17]), strict=True):
        marks = panel_lines(ax, "SAM (α = 1)")
        assert [m.get_marker() for m in marks] == ["*", "*"]
        assert [y for m in marks for y in m.get_ydata()] == sam
        assert [x for m in marks for x in m.get_xdata()] == pytest.approx([1, 1], abs=0.05)
        assert all(to_rgb(m.get_color()) == to_rgb(COLORS["SAM"]) for m in marks)
        marks = panel_lines(ax, "Standard (α = 0)")
        assert [m.get_marker() for m in marks] == ["s", "s"]
        assert [y for m in marks for y in m.get_ydata()] == [21, 17]
        assert [x for m in marks for x in m.get_xdata()] == pytest.approx([0, 0], abs=0.05)


def test_figure_2_shows_diverged_cells_instead_of_dropping_them(figure2):
    narrow, wide = figure2.axes
    (gone,) = panel_lines(narrow, DIVERGED)  # basic α −0.1 r 0.05: no seed finished
    assert list(gone.get_xdata()) == [-0.1] and list(gone.get_ydata()) == [1.0]  # at the top edge
    assert gone.get_marker() == "x" and narrow.get_xlim()[0] < -0.1
    texts = [t.get_text() for t in narrow.texts]
    assert texts.count("diverged") == 1
    assert "1 div." in texts  # basic α 1.5 r 0.05: 1 of its 2 seeds diverged, the mean is the other's
    assert not panel_lines(wide, DIVERGED) and "diverged" not in [t.get_text() for t in wide.texts]


def test_figure_2_with_one_augmentation_draws_a_line_per_variant(tmp_path):
    for variant, alpha, bests in (("standard", 0, [20, 22]), ("gnp", 0.5, [17, 19]), ("sam", 1, [19, 21]),
                                  ("fgr", 0.5, [18, 20]), ("fgr", 1.5, [None, None])):
        for seed, best in enumerate(bests):
            top1 = [30, math.nan] if best is None else [best + 5, best]
            write(tmp_path, trial_rows(alpha=alpha, r=0 if alpha == 0 else 0.05, seed=seed, top1=top1,
                                       variant=variant, status="diverged" if best is None else None))
    summary = summarize(load_results(tmp_path))
    (ax,) = paper_alpha_figure(summary[summary["variant"].isin(FAMILY)], "title").axes
    bars = {c.get_label(): c for c in ax.containers}
    assert sorted(bars) == ["FGR", "GNP"]
    assert to_rgb(bars["FGR"].lines[0].get_color()) == to_rgb(COLORS["FGR"])
    assert to_rgb(bars["GNP"].lines[0].get_color()) == to_rgb(COLORS["GNP"])
    (gone,) = panel_lines(ax, DIVERGED)
    assert list(gone.get_xdata()) == [1.5] and to_rgb(gone.get_color()) == to_rgb(COLORS["FGR"])


# ---- Figure 3 ----------------------------------------------------------------------------------------------


def test_figure_3_draws_each_alpha_above_1_against_the_best_alpha_by_final_error(paper):
    df = load_results(paper)
    basic = df[(df["augmentation"] == "basic") & df["variant"].isin(FAMILY)]
    final = summarize(basic, "final")
    norms, errors = growth_figure(basic, final, "title").axes
    lines = {line.get_label(): line for line in norms.get_lines()}
    # GNP α 0.8 has the lowest best-epoch error (10), but α 0.5 r 0.05 the lowest final one (18)
    reference = "reference, best 0 ≤ α ≤ 1: GNP α = 0.5, r = 0.05"
    assert set(lines) == {"GNP α = 1.5, r = 0.05 (1/2 diverged)", "GNP α = 1.5, r = 0.1", reference}
    assert list(lines[reference].get_ydata()) == [3.5, 4.5]  # 2 + α + epoch for both seeds
    assert lines[reference].get_linestyle() == "--" and to_rgb(lines[reference].get_color()) == (0, 0, 0)
    # the diverged seed counts until it diverged: ‖∇L‖ (4 + 6) / 2 then (8 + 1000) / 2; error the ok seed's
    grown = lines["GNP α = 1.5, r = 0.05 (1/2 diverged)"]
    assert list(grown.get_xdata()) == [1, 2] and list(grown.get_ydata()) == [5, 504]
    errors = {line.get_label(): list(line.get_ydata()) for line in errors.get_lines()}
    assert errors["GNP α = 1.5, r = 0.05 (1/2 diverged)"] == [30, 25]
    assert errors[reference] == [23, 18]  # seeds (22 + 24) / 2, then (17 + 19) / 2
    assert norms.get_yscale() == "log"
    assert growth_figure(basic, final[final["alpha"] <= 1], "title") is None  # no α > 1: no Figure 3


# ---- the Karakida table ------------------------------------------------------------------------------------

KARAKIDA = {  # (variant, α, r): each seed's best top-1 error; None: diverged
    ("standard", 0.0, 0.0): [20, 22, 24],
    ("fgr", 0.5, 0.05): [18, 20, 19.5],
    ("bgr", 0.5, 0.05): [21, 23, None],
    ("gnp", 0.5, 0.05): [17, 18, 19],
    ("db", 0.5, 0.05): [10, 10, 10],
    ("sam", 1.0, 0.05): [19, 21, 20.5],
    ("fgr", 1.0, 0.05): [30, 31, 33],
    ("gnp", 0.3, 0.1): [1, 2, 3],  # no other variant at (0.3, 0.1): no row
}


@pytest.fixture
def matched(tmp_path):
    for (variant, alpha, r), bests in KARAKIDA.items():
        for seed, best in enumerate(bests):
            top1 = [30, math.nan] if best is None else [best + 5, best]
            write(tmp_path, trial_rows(alpha=alpha, r=r, seed=seed, top1=top1, variant=variant,
                                       status="diverged" if best is None else None))
    return tmp_path


def by_hand(variant, alpha, r) -> str:
    values = [v for v in KARAKIDA[variant, alpha, r] if v is not None]
    diverged = len(KARAKIDA[variant, alpha, r]) - len(values)
    text = f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n = {len(values)}"
    return text + (f", {diverged} diverged)" if diverged else ")")


def test_the_karakida_table_puts_the_variants_side_by_side_at_matched_alpha_and_r(matched, capsys):
    assert main(["table", str(matched), "--kind", "karakida"]) == 0
    lines = capsys.readouterr().out.splitlines()
    columns = " | ".join(f"{label} top-1 (%)" for label in ("FGR", "BGR", "GNP", "SAM", "DB"))
    assert lines[0] == f"| Model | Data | α | r | {columns} |"
    half = [by_hand(v, 0.5, 0.05) for v in ("fgr", "bgr", "gnp")]
    db, fgr, sam = by_hand("db", 0.5, 0.05), by_hand("fgr", 1, 0.05), by_hand("sam", 1, 0.05)
    assert lines[2] == f"| smallcnn | digits (crop) | 0.5 | 0.05 | {' | '.join(half)} | – | **{db}** |"
    assert lines[3] == f"|  |  | 1 | 0.05 | {fgr} | – | – | **{sam}** | – |"
    assert half == ["19.17 ± 1.04 (n = 3)", "22.00 ± 1.41 (n = 2, 1 diverged)", "18.00 ± 1.00 (n = 3)"]
    assert lines[4] == ""  # two rows: (0.3, 0.1) holds GNP alone, standard is no column
    assert any("γ = α·r" in line and "ε = r" in line for line in lines)
    csv = pd.read_csv(io.StringIO(format_table(load_results(matched), fmt="csv", kind="karakida")))
    assert sorted(csv["variant"]) == ["bgr", "db", "fgr", "fgr", "gnp", "sam"]
    fgr = csv[(csv["variant"] == "fgr") & (csv["alpha"] == 1)].iloc[0]
    assert (fgr["test_top1_err_mean"], fgr["test_top1_err_std"], fgr["n"]) == pytest.approx(
        (statistics.mean([30, 31, 33]), statistics.stdev([30, 31, 33]), 3)
    )


def test_the_karakida_table_needs_two_of_its_variants_at_one_alpha_and_r(tmp_path, capsys):
    for variant, alpha in (("standard", 0.0), ("gnp", 0.5)):
        write(tmp_path, trial_rows(alpha=alpha, r=0.05, seed=0, top1=[3.0], variant=variant))
    with pytest.raises(AnalysisError, match=r"karakida compares fgr, bgr, gnp, sam, db .* hold only gnp"):
        format_table(load_results(tmp_path), kind="karakida")
    write(tmp_path, trial_rows(alpha=1, r=0.05, seed=0, top1=[3.0], variant="sam"))
    assert main(["table", str(tmp_path), "--kind", "karakida"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gnp, sam, but never two at one (α, r)" in err


def test_a_variant_added_to_the_registry_recolours_no_other():
    from analysis.style import COLORS, colors_for

    grown = colors_for(("Standard", "NEW", "GNP", "SAM", "FGR", "BGR", "ASAM", "DB"))
    assert all(grown[label] == COLORS[label] for label in COLORS)
    assert grown["NEW"] not in COLORS.values()
