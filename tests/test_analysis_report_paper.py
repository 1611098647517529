"""`python -m analysis report`: hand-made results with known numbers → the paper's layout with ours, the
published values (analysis.paper), Δ and the within-spread flag to the digit, GPU-hours as a hand
computation, the cells still missing, and one HTML page with the tables and the figures inline."""

import contextlib
import io

import pytest
from test_analysis import trial_rows, write

from analysis import paper
from analysis.__main__ import main

H100 = "NVIDIA H100 80GB HBM3"
IMAGENET = dict(recipe="imagenet-resnet50", dataset="imagenet", augmentation="inception", model="ResNet50")
WRN = dict(recipe="cifar10-wrn28-10", dataset="cifar10", augmentation="basic", model="WideResNet_28_10")


def block(folder, cells: dict, *, wall_s, workers, device, seeds_planned, **identity):
    """Each cell's trials, one per seed: the best epoch (2 of 2) holds the given top-1 (and top-5) errors."""
    for (alpha, r), errors in cells.items():
        for seed, (top1, top5) in enumerate(errors):
            rows = trial_rows(alpha=alpha, r=r, seed=seed, top1=[top1 + 10, top1], top5=[top5 + 10, top5],
                              seeds_planned=seeds_planned, wall_s=wall_s, workers=workers, epochs=2,
                              **identity)
            for row in rows:
                row["device"] = device
            write(folder, rows)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """ImageNet ResNet50, 3 seeds, on 4 H100s at 100 s an epoch (2 epochs: 800 device-seconds a trial):

    Standard α0:        23.50, 23.70, 23.90 → 23.70 ± 0.20 vs 23.64 ± 0.17: Δ +0.06 ≤ √(.2² + .17²) within
    SAM α1 r0.05:       24.00, 24.50, 25.00 → 24.50 ± 0.50 vs 23.16 ± 0.11: Δ +1.34 > 0.51        outside
    GNP α0.3 r0.05:     22.92, 23.02, 23.12 → 23.02 ± 0.10 vs 22.87 ± 0.15: Δ +0.15 > our 0.10 but
                        ≤ √(.1² + .15²) = 0.18: within only by the paper-std rule (top-5 6.60 ± 0.10)
    GNP α0.2 r0.05:     23.50, 23.60, 23.70 (worse: not chosen)
    CIFAR-10 WRN-28-10 basic, 3 of 5 planned seeds, 4 H100s at 50 s an epoch (400 device-seconds a trial):
    Standard α0:        3.40, 3.50, 3.60 → 3.50 ± 0.10 vs 3.53 (no paper std): Δ −0.03 ≤ 0.10 within
    GNP α0.8 r0.1:      2.90, 3.00, 3.10 → 3.00 ± 0.10 vs 2.52: Δ +0.48 outside
    and one digits trial on a CPU (outside the paper's tables; not GPU time).
    """
    folder = tmp_path_factory.mktemp("results") / "paper"
    gnp_top5 = [6.5, 6.6, 6.7]
    block(folder, {(0, 0): [(e, 7.0) for e in (23.5, 23.7, 23.9)],
                   (1, 0.05): [(e, 7.0) for e in (24.0, 24.5, 25.0)],
                   (0.3, 0.05): list(zip((22.92, 23.02, 23.12), gnp_top5, strict=True)),
                   (0.2, 0.05): [(e, 7.0) for e in (23.5, 23.6, 23.7)]},
          wall_s=100.0, workers=4, device=H100, seeds_planned=3, **IMAGENET)
    block(folder, {(0, 0): [(e, 1.0) for e in (3.4, 3.5, 3.6)],
                   (0.8, 0.1): [(e, 1.0) for e in (2.9, 3.0, 3.1)]},
          wall_s=50.0, workers=4, device=H100, seeds_planned=5, **WRN)
    block(folder, {(0, 0): [(20.0, 5.0)]}, wall_s=10.0, workers=2, device="cpu", seeds_planned=1)
    return folder


@pytest.fixture(scope="module")
def report(results):
    """report.md and report.html, written once for the module (the figures take seconds)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["report", str(results)]) == 0
    out = results / "report"
    assert printed.getvalue().split() == [str(out / "report.md"), str(out / "report.html")]
    return (out / "report.md").read_text(encoding="utf-8"), (out / "report.html").read_text(encoding="utf-8")


def section(text: str, title: str) -> str:
    """The Markdown from the heading that starts with `title` to the next heading of any level."""
    start = text.index(f"\n{title}")
    ends = [i for i in (text.find("\n#", start + 1),) if i > 0]
    return text[start:min(ends, default=len(text))]


def row(text: str, model: str, scheme: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {model} | {scheme} |"))
    return [cell.strip() for cell in line.strip("|").split(" | ")]


def test_table_4_cells_hold_ours_the_paper_s_delta_flag_and_n(report):
    md, _ = report
    table4 = section(md, "## Table 4")
    assert row(table4, "ResNet50", "Standard")[2:] == [
        "23.70 ± 0.20 · paper 23.64 ± 0.17 · Δ +0.06 within · n 3/3",
        "7.00 ± 0.00 · paper 7.01 ± 0.09 · Δ -0.01 within · n 3/3",
    ]
    assert row(table4, "ResNet50", "SAM")[2] == "24.50 ± 0.50 · paper 23.16 ± 0.11 · Δ +1.34 outside · n 3/3"
    gnp_top1, gnp_top5 = row(table4, "ResNet50", "GNP")[2:]
    # within only by √(ours² + paper²): |Δ| > our std
    assert gnp_top1 == "23.02 ± 0.10 · paper 22.87 ± 0.15 · Δ +0.15 within · n 3/3"
    assert gnp_top5 == "6.60 ± 0.10 · paper 6.59 ± 0.11 · Δ +0.01 within · n 3/3"
    assert paper.TABLE4["ResNet50"]["GNP"][:2] == (22.87, 0.15)
    # the paper's layout: Standard, SAM, GNP per network, the untrained networks as missing with the paper's
    assert [line.split(" | ")[1] for line in table4.splitlines() if line.startswith("| ResNet50 |")] == [
        "Standard", "SAM", "GNP"]
    assert row(table4, "ResNet101", "GNP")[2:] == ["missing · paper 20.53 ± 0.13",
                                                   "missing · paper 5.18 ± 0.08"]
    assert "| Model | Scheme | imagenet (inception) top-1 | imagenet (inception) top-5 |" in table4


def test_table_1_uses_our_std_alone_where_the_paper_gives_none(report):
    md, _ = report
    table1 = section(md, "## Table 1")
    standard = row(table1, "WideResNet_28_10", "Standard")
    assert standard[2] == "3.50 ± 0.10 · paper 3.53 · Δ -0.03 within · n 3/5"
    assert row(table1, "WideResNet_28_10", "GNP")[2] == "3.00 ± 0.10 · paper 2.52 · Δ +0.48 outside · n 3/5"
    assert paper.TABLE1["WideResNet_28_10"]["GNP"][("cifar10", "basic")] == 2.52
    assert row(table1, "WideResNet_28_10", "SAM")[2] == "missing · paper 2.78"
    assert standard[3] == "missing · paper 2.81"  # cifar10 cutout: no results of ours


def test_the_chosen_alpha_r_and_the_selection_rule_are_stated(report):
    md, _ = report
    chosen = section(md, "### Table 4: chosen")
    assert row(chosen, "ResNet50", "GNP")[2] == "α 0.3, r 0.05"  # not the worse α 0.2
    assert row(chosen, "ResNet50", "SAM")[2] == "α 1, r 0.05"
    assert row(chosen, "ResNet101", "GNP")[2] == "–"
    assert "epoch of its lowest test top-1 error" in md and "(--pick best, the paper's rule)" in md
    assert "so our numbers are optimistic" in md
    assert "√(our std² + paper std²)" in md


def test_gpu_hours_are_wall_time_times_workers_on_gpus(report):
    md, _ = report
    cost = section(md, "## GPU-hours")
    imagenet = 12 * 2 * 100.0 * 4 / 3600  # 4 cells × 3 seeds, 2 epochs of 100 s on 4 GPUs
    cifar = 6 * 2 * 50.0 * 4 / 3600
    assert row(cost, "Table 4", "12")[3] == f"{imagenet:.2f}" == "2.67"
    assert row(cost, "Table 1", "6")[3] == f"{cifar:.2f}" == "0.67"
    assert row(cost, "Tables 2–3", "0")[3] == "0.00"
    assert row(cost, "Total", "19")[2:] == ["18", f"{imagenet + cifar:.2f}", f"{2 * 10 * 2 / 3600:.2f}"]
    assert row(cost, "outside the paper's tables", "1")[2:4] == ["0", "0.00"]  # the CPU trial


def test_missing_cells_and_tables_without_results_are_listed(report):
    md, _ = report
    assert "Tables with results here: Table 1, Table 4. Tables with no results here: Tables 2–3." in md
    assert "\n## Tables 2–3" not in md and "\n## Table 4: ImageNet" in md
    missing = md[md.index("## Cells still missing"):]
    table4 = section(missing, "### Table 4")
    assert "- ResNet101 Standard: imagenet (inception)" in table4
    assert "- VGG16BN GNP: imagenet (inception)" in table4 and "ResNet50" not in table4
    table1 = section(missing, "### Table 1")
    everything = "cifar10 (basic), cifar10 (cutout), cifar100 (basic), cifar100 (cutout)"
    assert f"- WideResNet_28_10 SAM: {everything}" in table1
    assert "- WideResNet_28_10 GNP: cifar10 (cutout), cifar100 (basic), cifar100 (cutout)" in table1
    assert "- ViT_S16 GNP: cifar10 (basic), cifar10 (heavy), cifar100 (basic), cifar100 (heavy)" in section(
        missing, "### Tables 2–3")


def test_the_html_page_holds_the_tables_and_the_figures_inline(report, results):
    md, page = report
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page and "<link" not in page
    assert "<td>23.02 ± 0.10<br>paper 22.87 ± 0.15<br>Δ +0.15 within<br>n 3/3</td>" in page
    assert '<span class="outside">Δ +1.34 outside</span>' in page
    assert page.count('<img src="data:image/png;base64,') >= 2  # Table 1's and Table 4's figures
    assert "![alpha-imagenet-resnet50-ResNet50-imagenet-inception](figures/alpha-" in md
    assert (results / "report" / "figures").is_dir()


def test_a_network_not_transcribed_a_single_seed_out_and_pick(tmp_path, capsys):
    folder = tmp_path / "results"
    block(folder, {(0, 0): [(5.0, 1.0)]}, wall_s=1.0, workers=1, device=H100, seeds_planned=1,
          **{**WRN, "recipe": "cifar10-vgg16", "model": "VGG16"})
    block(folder, {(0.8, 0.1): [(2.6, 1.0)]}, wall_s=1.0, workers=1, device=H100, seeds_planned=1, **WRN)
    out = tmp_path / "elsewhere"
    assert main(["report", str(folder), "--out", str(out), "--pick", "final"]) == 0
    md = (out / "report.md").read_text(encoding="utf-8")
    assert not (folder / "report").exists()
    assert "each trial scored at its last epoch (--pick final)" in md and "held-out" not in md
    table1 = section(md, "## Table 1")
    assert row(table1, "VGG16", "Standard")[2] == "5.00 · paper: not transcribed · n 1/1"
    single = row(table1, "WideResNet_28_10", "GNP")[2]
    assert single == "2.60 · paper 2.52 · Δ +0.08 no spread (n < 2) · n 1/1"
    assert table1.index("| WideResNet_28_10 |") < table1.index("| VGG16 |")  # the paper's rows first
    assert "- VGG16 " not in md[md.index("## Cells still missing"):]  # not known to be among the paper's
    capsys.readouterr()


def test_bad_input_is_one_line(results, tmp_path, capsys):
    for folder in (tmp_path / "none", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
        assert main(["report", str(folder)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ")
        assert ("does not exist" if folder.name == "none" else "no trial files") in err
    (tmp_path / "file").write_text("")
    assert main(["report", str(results), "--out", str(tmp_path / "file" / "report")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "choose another --out" in err
    assert main(["report", results.as_uri()]) == 2  # a URI: no local folder to write RESULTS/report into
    assert "give the report a local folder with --out" in capsys.readouterr().err
