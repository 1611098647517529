"""analysis/: hand-made result files with known values → means and stds to the digit, the paper's selection,
diverged/failed/missing trials counted and never averaged, bad files named, LaTeX and figures well formed,
and `python -m analysis`: one line on stderr and exit code 2 for bad input."""

import io
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import analysis
from analysis import AnalysisError, format_table, load_results, make_figures, select_schemes, summarize
from analysis.__main__ import main
from analysis.render import DASH
from gnp.rows import OPTIONAL, RESULT_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
BLOCK = dict(recipe="digits", dataset="digits", augmentation="crop", model="smallcnn")


def trial_rows(
    *,
    alpha,
    r,
    seed,
    top1,
    top5=None,
    status=None,
    variant=None,
    seeds_planned=3,
    experiment="exp",
    wall_s=10.0,
    workers=2,
    images_per_s=100.0,
    trial_wall_s=None,
    epochs=3,
    **block,
):
    """One trial's rows, epoch by epoch: `top1`/`top5` list the test errors, `status` the last row's;
    `epochs` is the planned count (a diverged trial stops short of it)."""
    variant = variant or ("standard" if alpha == 0 else "sam" if alpha == 1 else "gnp")
    identity = {**BLOCK, **block}
    config = "-".join([variant, f"a{alpha:g}", f"r{r:g}", experiment, *block.values()])
    top5 = top5 or [e / 4 for e in top1]
    rows = []
    for epoch, (e1, e5) in enumerate(zip(top1, top5, strict=True), start=1):
        rows.append(
            dict(
                experiment=experiment,
                trial_key=f"{config}-s{seed}",
                config_key=config,
                **identity,
                variant=variant,
                alpha=float(alpha),
                r=float(r),
                seed=seed,
                seeds_planned=seeds_planned,
                epoch=epoch,
                epochs=epochs,
                train_loss=1.0 / epoch,
                train_err=e1,
                test_top1_err=e1,
                test_top5_err=e5,
                grad_norm=2.0 + alpha + epoch,
                lr=0.1,
                images_per_s=images_per_s,
                wall_s=wall_s,
                workers=workers,
                device="cpu",
                status="ok",
                code_version="test",
                trial_wall_s=trial_wall_s,
            )
        )
    if status:
        rows[-1]["status"] = status
    return rows


def write(folder, rows, name=None):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name or rows[0]['trial_key']}.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=RESULT_SCHEMA), path)
    return path


def nan_epoch(top1):
    """A diverged trial's rows: the good epochs, then NaN errors in the epoch that diverged."""
    return [*top1, math.nan]


@pytest.fixture
def grid(tmp_path):
    """A 3-seed grid on digits/smallcnn with known best-epoch top-1 errors (top-5 = top-1 / 4, except GNP):

    standard α0:         20, 22, 24      → 22.00 ± 2.00 (final epoch: best + 1 → 23.00 ± 2.00)
    SAM α1 r0.05:        21, 22, 23      → 22.00 ± 1.00
    SAM α1 r0.1:         19, 20, 21      → 20.00 ± 1.00   (SAM's best r)
    GNP α0.3 r0.05:      25, 26, 27      → 26.00 ± 1.00   (worse α: not chosen)
    GNP α0.8 r0.05:      17, 18, 19      → 18.00 ± 1.00   (GNP, top-5 3, 3, 3 → 3.00 ± 0.00)
    GNP α0.5 r0.1:       30; seed 1 diverged (5 before); seed 2 missing → 30.00, 1/3 seeds
    GNP α1.5 r0.05:      10 (better, but α > 1 is no GNP); seeds 1 and 2 diverged
    """
    folder = tmp_path / "results" / "exp"
    cells = {
        (0, 0.0): [20, 22, 24],
        (1, 0.05): [21, 22, 23],
        (1, 0.1): [19, 20, 21],
        (0.3, 0.05): [25, 26, 27],
    }
    for (alpha, r), bests in cells.items():
        for seed, best in enumerate(bests):
            write(folder, trial_rows(alpha=alpha, r=r, seed=seed, top1=[best + 10, best, best + 1]))
    for seed, best in enumerate([17, 18, 19]):
        write(
            folder, trial_rows(alpha=0.8, r=0.05, seed=seed, top1=[best + 10, best, best + 1], top5=[9, 3, 4])
        )
    write(folder, trial_rows(alpha=0.5, r=0.1, seed=0, top1=[40, 30, 31]))
    write(folder, trial_rows(alpha=0.5, r=0.1, seed=1, top1=nan_epoch([5, 5]), status="diverged"))
    for seed in range(3):
        top1 = [20, 10, 11] if seed == 0 else nan_epoch([50])
        write(
            folder,
            trial_rows(alpha=1.5, r=0.05, seed=seed, top1=top1, status=None if seed == 0 else "diverged"),
        )
    return folder


def cell(summary, alpha, r):
    rows = summary[(summary["alpha"] == alpha) & (summary["r"] == r)]
    assert len(rows) == 1
    return rows.iloc[0]


# ---- load ---------------------------------------------------------------------------------------------------


def test_load_reads_every_trial_file_with_the_schema(grid):
    (grid / "_ray" / "run").mkdir(parents=True)
    (grid / "_ray" / "run" / "state.parquet").write_bytes(b"not a result")  # Ray's storage: not read
    (grid / "_grid.json").write_text("{}")
    write(grid / "more", trial_rows(alpha=0.8, r=0.2, seed=0, top1=[1.0]))  # recursive
    df = load_results(grid)
    assert df["trial_key"].nunique() == 3 * 5 + 2 + 3 + 1
    assert list(df.columns) == RESULT_SCHEMA.names
    assert str(df["alpha"].dtype) == "float64" and str(df["seed"].dtype) == "int64"


def test_a_corrupt_file_is_named_or_skipped_with_a_warning(grid):
    bad = grid / "zz-corrupt.parquet"
    bad.write_bytes(b"PAR1 this is not a parquet footer")
    with pytest.raises(AnalysisError, match=r"zz-corrupt\.parquet.*skip") as err:
        load_results(grid)
    assert "\n" not in str(err.value) and isinstance(err.value, ValueError)
    with pytest.warns(UserWarning, match="zz-corrupt.parquet"):
        df = load_results(grid, on_bad="skip")
    assert df["trial_key"].nunique() == 3 * 5 + 2 + 3


def test_a_file_with_another_schema_is_named_with_its_columns(grid):
    table = pa.Table.from_pylist(trial_rows(alpha=0.8, r=0.05, seed=9, top1=[1.0]), schema=RESULT_SCHEMA)
    table = table.drop_columns(["grad_norm"]).set_column(8, "alpha", pa.array(["0.8"]))
    pq.write_table(table, grid / "other.parquet")
    with pytest.raises(
        AnalysisError, match=r"other\.parquet.*missing grad_norm.*alpha is string, not double"
    ):
        load_results(grid)
    with pytest.warns(UserWarning, match="other.parquet"):
        assert 9 not in set(load_results(grid, on_bad="skip")["seed"])


def test_unknown_status_and_nulls_in_required_columns_are_bad_files(tmp_path):
    rows = trial_rows(alpha=0, r=0, seed=0, top1=[1.0])
    write(tmp_path, [{**rows[0], "status": "done"}], name="status")
    with pytest.raises(AnalysisError, match=r"status\.parquet.*'done'"):
        load_results(tmp_path)
    (tmp_path / "status.parquet").unlink()
    nullable = pa.schema([f.with_nullable(True) for f in RESULT_SCHEMA])
    pq.write_table(
        pa.Table.from_pylist([{**rows[0], "model": None}], schema=nullable), tmp_path / "null.parquet"
    )
    with pytest.raises(AnalysisError, match=r"null\.parquet.*model hold nulls"):
        load_results(tmp_path)


def test_a_missing_folder_or_an_empty_one_is_one_line(tmp_path):
    with pytest.raises(AnalysisError, match="does not exist"):
        load_results(tmp_path / "nope")
    with pytest.raises(AnalysisError, match=r"no trial files \(\*\.parquet\)"):
        load_results(tmp_path)
    (tmp_path / "bad.parquet").write_bytes(b"junk")
    with pytest.warns(UserWarning), pytest.raises(AnalysisError, match="all 1 trial files .* skipped"):
        load_results(tmp_path, on_bad="skip")


def test_files_without_the_optional_columns_still_load(tmp_path):
    old = pa.schema([f for f in RESULT_SCHEMA if f.name not in OPTIONAL])
    rows = trial_rows(alpha=0, r=0, seed=0, top1=[3.0, 2.0])
    pq.write_table(pa.Table.from_pylist(rows, schema=old), tmp_path / "old.parquet")
    df = load_results(tmp_path)
    assert list(df.columns) == RESULT_SCHEMA.names and df[list(OPTIONAL)].isna().all().all()
    assert "Ray's own wall time (starting worker groups, checkpoints) is not in" in format_table(df)
    wrong = pa.Table.from_pylist(rows, schema=RESULT_SCHEMA).set_column(
        RESULT_SCHEMA.get_field_index("trial_wall_s"), "trial_wall_s", pa.array(["50"] * len(rows))
    )
    pq.write_table(wrong, tmp_path / "wrong.parquet")
    with pytest.raises(AnalysisError, match=r"wrong\.parquet.*trial_wall_s is string, not double"):
        load_results(tmp_path)


def test_a_uri_is_read_through_pyarrow_filesystems(grid):
    assert load_results(f"file://{grid}")["trial_key"].nunique() == 3 * 5 + 2 + 3


def test_the_same_trial_in_two_files_is_refused(grid):
    write(grid.parent / "copy", trial_rows(alpha=0, r=0.0, seed=0, top1=[1.0]))
    with pytest.raises(AnalysisError, match=r"standard-a0-r0-exp-s0 is in both .* one experiment"):
        load_results(grid.parent)


# ---- summary and selection ----------------------------------------------------------------------------------


def test_mean_and_sample_std_over_seeds_to_the_digit(grid):
    summary = summarize(load_results(grid))
    standard = cell(summary, 0, 0)
    assert (standard["test_top1_err_mean"], standard["test_top1_err_std"], standard["n"]) == (22.0, 2.0, 3)
    assert (standard["test_top5_err_mean"], standard["test_top5_err_std"]) == (5.5, 0.5)
    gnp = cell(summary, 0.8, 0.05)
    assert (gnp["test_top1_err_mean"], gnp["test_top5_err_std"]) == (18.0, 0.0) and gnp[
        "test_top5_err_mean"
    ] == 3
    # device-hours per trial: 3 epochs × 10 s × 2 workers / 3600
    assert standard["device_hours"] == pytest.approx(60 / 3600) and standard["images_per_s"] == 100.0
    row = "| smallcnn | digits (crop) | Standard | 0 | 0 | 22.00 ± 2.00 | 5.50 ± 0.50 | 3/3 |"
    assert row in format_table(load_results(grid))


def test_pick_final_scores_the_last_epoch(grid):
    df = load_results(grid)
    final = cell(summarize(df, pick="final"), 0, 0)
    assert (final["test_top1_err_mean"], final["test_top1_err_std"]) == (23.0, 2.0)
    assert cell(summarize(df, pick="final"), 0.8, 0.05)["test_top5_err_mean"] == 4.0
    with pytest.raises(AnalysisError, match="pick"):
        summarize(df, pick="median")


def test_diverged_trials_are_counted_never_averaged(grid):
    summary = summarize(load_results(grid))
    # the diverged seed had 5 % before it diverged: averaged in, the mean would be 17.5
    half = cell(summary, 0.5, 0.1)
    assert (half["test_top1_err_mean"], half["n"], half["diverged"], half["failed"]) == (30.0, 1, 1, 0)
    assert math.isnan(half["test_top1_err_std"])
    gone = cell(summary, 1.5, 0.05)
    assert (gone["n"], gone["diverged"], gone["test_top1_err_mean"]) == (1, 2, 10.0)
    text = format_table(load_results(grid))
    assert "smallcnn/digits gnp α=1.5 r=0.05: 2 diverged" in text and "gnp α=0.5 r=0.1: 1 diverged" in text


def test_missing_seeds_are_flagged(grid):
    summary = summarize(load_results(grid))
    assert cell(summary, 0.5, 0.1)["incomplete"] and not cell(summary, 0, 0)["incomplete"]
    assert summary["incomplete"].sum() == 2  # α 0.5 and α 1.5 (1 of 3 each)
    text = format_table(load_results(grid), kind="cells")
    assert "| 1/3† |" in text and "† fewer ok seeds than planned" in text


def test_selection_follows_the_paper(grid):
    chosen = select_schemes(summarize(load_results(grid))).set_index("scheme")
    assert list(chosen.index) == ["Standard", "GNP", "SAM"]  # the variant registry's order
    assert (chosen.loc["Standard", "alpha"], chosen.loc["Standard", "test_top1_err_mean"]) == (0.0, 22.0)
    sam, gnp = chosen.loc["SAM"], chosen.loc["GNP"]
    assert (sam["alpha"], sam["r"], sam["test_top1_err_mean"]) == (1.0, 0.1, 20.0)  # SAM at its best r
    # not α 0.3 (26) nor 0.5 (30), and not α 1.5 (10): GNP is 0 < α < 1
    assert (gnp["alpha"], gnp["r"], gnp["test_top1_err_mean"]) == (0.8, 0.05, 18.0)


def test_the_scheme_table_shows_choice_cost_and_bold_best(grid):
    text = format_table(load_results(grid))
    lines = text.splitlines()
    assert lines[0].startswith("| Model | Data | Scheme | α | r | Top-1 err (%) | Top-5 err (%) | Seeds |")
    assert lines[4] == "|  |  | SAM | 1 | 0.1 | 20.00 ± 1.00 | 5.00 ± 0.25 | 3/3 | 0 | 0 | 0.0167 | 100 |"
    assert (
        lines[3]
        == "|  |  | GNP | 0.8 | 0.05 | **18.00 ± 1.00** | **3.00 ± 0.00** | 3/3 | 0 | 0 | 0.0167 | 100 |"
    )
    assert text.count("**") == 4


def test_a_scheme_whose_cells_all_diverged_keeps_a_row_with_the_counts(tmp_path):
    for seed in range(2):
        write(tmp_path, trial_rows(alpha=0, r=0, seed=seed, top1=[10.0], seeds_planned=2))
        for r in (0.05, 0.1):
            write(
                tmp_path,
                trial_rows(alpha=1, r=r, seed=seed, top1=nan_epoch([]), status="diverged", seeds_planned=2),
            )
    sam = select_schemes(summarize(load_results(tmp_path))).set_index("scheme").loc["SAM"]
    assert (sam["n"], sam["diverged"]) == (0, 4) and math.isnan(sam["alpha"]) and math.isnan(sam["r"])
    assert "| SAM | – | – | – | – | 0/2† | 4 | 0 |" in format_table(load_results(tmp_path))


def test_the_grid_end_of_run_table_with_a_handful_of_rows(tmp_path):
    """What jobs.grid prints: 2 seeds × α {0, 0.8, 1} on digits; one diverged and one failed trial."""
    for alpha, r, best in ((0, 0, 20), (0.8, 0.05, 18), (1, 0.05, 19)):
        write(tmp_path, trial_rows(alpha=alpha, r=r, seed=0, top1=[30, best], seeds_planned=2))
    write(tmp_path, trial_rows(alpha=0, r=0, seed=1, top1=[40, 22], seeds_planned=2))
    write(
        tmp_path,
        trial_rows(alpha=1, r=0.05, seed=1, top1=nan_epoch([50]), status="diverged", seeds_planned=2),
    )
    failed = trial_rows(alpha=0.8, r=0.05, seed=1, top1=[math.nan], status="failed", seeds_planned=2)
    write(tmp_path, [{**failed[0], "epoch": 0, "wall_s": None, "grad_norm": None, "images_per_s": None}])
    text = format_table(load_results(tmp_path), fmt="md", pick="best")
    assert (
        "| smallcnn | digits (crop) | Standard | 0 | 0 | 21.00 ± 1.41 | 5.25 ± 0.35 | 2/2 | 0 | 0 |" in text
    )
    assert "|  |  | SAM | 1 | 0.05 | 19.00 | 4.75 | 1/2† | 1 | 0 |" in text
    assert "|  |  | GNP | 0.8 | 0.05 | **18.00** | **4.50** | 1/2† | 0 | 1 |" in text
    assert "gnp α=0.8 r=0.05: 1 failed" in text and "sam α=1 r=0.05: 1 diverged" in text


def test_one_cell_from_two_configurations_is_refused(grid):
    write(grid.parent / "longer", trial_rows(alpha=0, r=0, seed=7, top1=[1.0], experiment="longer"))
    df = load_results(grid.parent)
    df.loc[df["experiment"] == "longer", "trial_key"] = "other-s7"
    with pytest.raises(AnalysisError, match=r"2 different configurations whose rows do not say how they differ "
                                            r"\(experiments: exp, longer\)"):
        summarize(df)


# ---- formats ------------------------------------------------------------------------------------------------


def strip_escapes(tex: str) -> str:
    return re.sub(r"\\[&%$#_{}]", "", tex)


def test_latex_is_a_balanced_escaped_booktabs_tabular(grid):
    write(grid, trial_rows(alpha=0, r=0, seed=0, top1=[12.0], model="wrn_28&10%", augmentation="cut#out<2>"))
    tex = format_table(load_results(grid), fmt="latex")
    body = [line for line in tex.splitlines() if not line.startswith("%")]
    assert body[0] == r"\begin{tabular}{lllrrrrrrrrr}" and body[-1] == r"\end{tabular}"
    assert body[1] == r"\toprule" and body.count(r"\midrule") == 2 and body[-2] == r"\bottomrule"
    assert r"wrn\_28\&10\%" in tex and r"cut\#out$<$2$>$" in tex and r"\textbf{18.00 $\pm$ 1.00}" in tex
    text = strip_escapes("\n".join(body))
    assert text.count("{") == text.count("}") and text.count("$") % 2 == 0
    assert not re.search(r"[_%#]", text)
    rows = [strip_escapes(line) for line in body if line.endswith(r"\\")]
    assert len(rows) == 1 + 3 + 1 and all(line.count("&") == 11 for line in rows)  # header, 3 + 1 schemes


def test_csv_holds_the_numbers(grid):
    table = pd.read_csv(io.StringIO(format_table(load_results(grid), fmt="csv")))
    assert list(table["scheme"]) == ["Standard", "GNP", "SAM"]
    gnp = table.loc[1, ["alpha", "r", "test_top1_err_mean", "test_top1_err_std", "n"]]
    assert gnp.tolist() == [0.8, 0.05, 18, 1, 3]
    cells = pd.read_csv(io.StringIO(format_table(load_results(grid), fmt="csv", kind="cells")))
    assert len(cells) == 7 and cells["diverged"].sum() == 3


def test_the_dataset_table_has_a_column_per_dataset_and_augmentation(grid):
    for seed, best in enumerate([40, 44]):
        write(grid, trial_rows(alpha=0, r=0, seed=seed, top1=[best], augmentation="flip"))
        write(grid, trial_rows(alpha=0.3, r=0.05, seed=seed, top1=[best - 5], augmentation="flip"))
    lines = format_table(load_results(grid), kind="datasets").splitlines()
    assert lines[0] == "| Model | Scheme | digits (crop) top-1 err (%) | digits (flip) top-1 err (%) |"
    assert lines[2] == "| smallcnn | Standard | 22.00 ± 2.00 | 42.00 ± 2.83† |"
    assert lines[3] == "|  | GNP | **18.00 ± 1.00 (α 0.8, r 0.05)** | **37.00 ± 2.83† (α 0.3, r 0.05)** |"
    assert lines[4] == "|  | SAM | 20.00 ± 1.00 (α 1, r 0.1) | – |"


def test_bad_arguments_are_analysis_errors(grid):
    df = load_results(grid)
    for call in (
        lambda: format_table(df, fmt="html"),
        lambda: format_table(df, kind="wide"),
        lambda: load_results(grid, on_bad="ignore"),
        lambda: summarize(df.iloc[:0]),
    ):
        with pytest.raises(AnalysisError):
            call()


# ---- figures and imports --------------------------------------------------------------------------------------


def test_figures_are_written_as_png_and_pdf(grid, tmp_path):
    paths = make_figures(load_results(grid), tmp_path / "fig")
    names = sorted(p.name for p in paths)
    assert names == [
        "alpha-digits-smallcnn-crop.pdf",
        "alpha-digits-smallcnn-crop.png",
        "epochs-digits-smallcnn-crop.pdf",
        "epochs-digits-smallcnn-crop.png",
        "fig2-digits-smallcnn.pdf",  # per model over its augmentations
        "fig2-digits-smallcnn.png",
        "fig3-digits-smallcnn-crop.pdf",  # the grid ran α = 1.5
        "fig3-digits-smallcnn-crop.png",
        "heatmap-digits-smallcnn-crop.pdf",
        "heatmap-digits-smallcnn-crop.png",
    ]
    for path in paths:
        head = path.read_bytes()[:8]
        assert path.stat().st_size > 1000 and head[:4] in (b"\x89PNG", b"%PDF")


def test_figures_need_an_ok_trial(tmp_path):
    write(tmp_path, trial_rows(alpha=1, r=0.05, seed=0, top1=nan_epoch([]), status="diverged"))
    with pytest.raises(AnalysisError, match="no ok trials"):
        make_figures(load_results(tmp_path), tmp_path / "fig")


def test_analysis_never_imports_torch_or_ray():
    code = (
        "import pkgutil, importlib, sys, analysis\n"
        "for m in pkgutil.iter_modules(analysis.__path__): importlib.import_module('analysis.' + m.name)\n"
        "assert len([n for n in sys.modules if n.startswith('analysis.')]) >= 6, sorted(sys.modules)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'ray'))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_the_public_api_is_exported():
    assert all(callable(getattr(analysis, name)) for name in analysis.__all__)
    assert {"load_results", "summarize", "select_schemes", "format_table", "make_figures"} <= set(
        analysis.__all__
    )
    assert analysis.__doc__.startswith("Result tables to the paper's mean ± std tables and figures")


# ---- command line -------------------------------------------------------------------------------------------


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "results" / "digits-grid"
    for seed, (standard, gnp) in enumerate([(20, 17), (22, 18), (24, 19)]):
        write(folder, trial_rows(alpha=0, r=0, seed=seed, top1=[standard, 30]))
        write(folder, trial_rows(alpha=0.8, r=0.05, seed=seed, top1=[gnp, 30]))
    return folder


def test_table_prints_markdown_latex_and_csv(results, capsys):
    assert main(["table", str(results)]) == 0
    out = capsys.readouterr().out
    assert (
        "| smallcnn | digits (crop) | Standard | 0 | 0 | 22.00 ± 2.00 |" in out and "**18.00 ± 1.00**" in out
    )
    assert main(["table", str(results), "--format", "latex", "--pick", "final"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith(r"\begin{tabular}") and "booktabs" in out.splitlines()[0]
    assert out.count(r"\textbf{30.00 $\pm$ 0.00}") == 2  # a tie: both bold
    assert main(["table", str(results), "--format", "csv", "--kind", "cells"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("recipe,model,dataset,augmentation,variant,alpha,r,test_top1_err_mean,")


def test_figures_writes_and_lists_the_files(results, tmp_path, capsys):
    assert main(["figures", str(results), "--out", str(tmp_path / "fig")]) == 0
    paths = [Path(line) for line in capsys.readouterr().out.splitlines()]
    assert len(paths) == 8 and all(p.parent == tmp_path / "fig" and p.stat().st_size > 0 for p in paths)


def test_a_bad_file_is_one_line_and_exit_2_or_skipped(results, capsys):
    (results / "broken.parquet").write_bytes(b"\x00" * 64)
    assert main(["table", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: bad result file ") and "broken.parquet" in err
    assert "--skip-bad" in err
    assert main(["table", str(results), "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("warning: skipped bad result file") and captured.err.count("\n") == 1
    assert "22.00 ± 2.00" in captured.out


def test_an_unwritable_figure_folder_is_one_line(results, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["figures", str(results), "--out", str(tmp_path / "file" / "fig")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "choose another --out" in err


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_bad_folders_exit_2_with_one_line_and_no_traceback(tmp_path, case):
    folder = tmp_path / "nothing"
    if case == "empty":
        folder.mkdir()
    command = [sys.executable, "-m", "analysis", "table", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert ("does not exist" if case == "missing" else "no trial files") in done.stderr


def test_help_for_each_command(capsys):
    for argv in (["--help"], ["table", "--help"], ["compare", "--help"], ["figures", "--help"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--format {md,latex,csv}" in out and "--pick {best,final,holdout}" in out and "--out OUT" in out
    assert out.count("--pick {best,final,holdout}") >= 3  # every command
    assert "(default: final)" in out  # compare scores the last epoch unless told otherwise
    assert "gnp:alpha=0.3,r=0.05" in out and "trials: every seed" in out


def test_the_paper_s_numbers_stand_beside_ours_where_it_reports_them(tmp_path):
    folder = tmp_path / "results" / "mixed"
    wrn = dict(recipe="cifar10-wrn28-10", dataset="cifar10", model="WideResNet_28_10")
    for augmentation in ("basic", "cutout"):
        for alpha, errors in ((0, [3.6, 3.4]), (0.8, [2.6, 2.4])):
            for seed, best in enumerate(errors):
                write(folder, trial_rows(alpha=alpha, r=0.1, seed=seed, top1=[best + 1, best], seeds_planned=2,
                                         augmentation=augmentation, **wrn))
    datasets = format_table(load_results(folder), kind="datasets", paper=True)
    assert "2.50 ± 0.14 (α 0.8, r 0.1) [paper 2.52]" in datasets  # CIFAR-10 basic, GNP: Table 1
    assert "3.50 ± 0.14 [paper 2.81]" in datasets  # cutout, Standard
    assert "Zhao, Zhang & Hu, ICML 2022" in datasets
    for seed, best in enumerate([23.5, 23.7]):
        write(folder, trial_rows(alpha=0, r=0, seed=seed, top1=[30, best], seeds_planned=2, recipe="imagenet-resnet50",
                                 dataset="imagenet", augmentation="inception", model="ResNet50"))
    schemes = format_table(load_results(folder), paper=True)
    row = next(line for line in schemes.splitlines() if line.startswith("| ResNet50"))
    assert row.rstrip(" |").endswith("23.64 ± 0.17 / 7.01 ± 0.09")  # Table 4, top-1 / top-5
    gnp_rows = {line.rstrip(" |").rsplit("| ", 1)[1] for line in schemes.splitlines() if "| GNP |" in line}
    assert gnp_rows == {"2.52", "2.16"}  # CIFAR-10 basic and cutout: Table 1 gives the top-1 mean only
    write(folder, trial_rows(alpha=1, r=0.1, seed=0, top1=[9, 8], seeds_planned=1, recipe="digits"))
    assert "| SAM | 1 | 0.1 |" in (table := format_table(load_results(folder), paper=True))
    assert next(line for line in table.splitlines() if "| SAM |" in line).rstrip(" |").endswith(DASH)
    with pytest.raises(AnalysisError, match="not --kind cells"):
        format_table(load_results(folder), kind="cells", paper=True)


def test_options_that_vary_get_a_column_and_split_every_table(tmp_path):
    """A grid sweeping mix and clipping: load_results has a column for each (typed), the tables a block per
    value with the option named, compare and the figures run per block; nothing is averaged across them."""
    import json

    from gnp.config import maths_fields
    from gnp.recipes import get_recipe

    folder = tmp_path / "results" / "swept"
    for mix in ("paper", "official"):
        for clip in (None, 5.0):
            for alpha in (0.0, 0.5):
                cfg = get_recipe("digits", mix=mix, clip_grad_norm=clip, alpha=alpha,
                                 variant="standard" if alpha == 0 else "gnp", r=0.0 if alpha == 0 else 0.05)
                for seed in (0, 1):
                    best = 10 + 5 * (mix == "official") + 2 * (clip is None) - 3 * alpha + seed
                    rows = trial_rows(alpha=alpha, r=cfg.r, seed=seed, top1=[best + 5, best], seeds_planned=2,
                                      experiment=f"swept-{mix}-{clip}")
                    for row in rows:
                        row["config"] = json.dumps(maths_fields(cfg), sort_keys=True)
                    write(folder, rows)
    df = load_results(folder)
    df["lr"] = 0.1 / df["epoch"]  # the schema's lr is each epoch's (a schedule): never an option column
    assert set(df["mix"]) == {"paper", "official"} and df["clip_grad_norm"].isna().any()
    assert set(df["clip_grad_norm"].dropna()) == {5.0} and "momentum" not in df.columns  # only what varies
    table = format_table(df)
    assert "| Model | Data | mix | clip_grad_norm | Scheme |" in table
    assert "| smallcnn | digits (crop) | official | 5 | Standard | 0 | 0 | 15.50 ± 0.71 |" in table
    assert "|  |  | official | none | Standard | 0 | 0 | 17.50 ± 0.71 |" in table
    assert "|  |  | paper | 5 | Standard | 0 | 0 | 10.50 ± 0.71 |" in table
    assert "|  |  |  |  | GNP | 0.5 | 0.05 | **9.00 ± 0.71** |" in table
    assert len(summarize(df)) == 8  # 2 mixes × 2 clips × (standard, GNP): never averaged across them
    compared = analysis.compare(df, "GNP", "Standard")
    assert len(compared) == 4 and set(compared["mix"]) == {"paper", "official"}
    assert (compared["diff"] == -1.5).all()
    assert "| official | none | GNP (α 0.5, r 0.05) | Standard" in analysis.format_comparison(compared)
    datasets = format_table(df, kind="datasets")
    assert "| Model | mix | clip_grad_norm | Scheme |" in datasets
    paths = make_figures(df, tmp_path / "figures")
    for kind in ("alpha", "fig2"):  # one figure set per (mix, clip)
        assert len({p.stem for p in paths if p.stem.startswith(f"{kind}-")}) == 4
