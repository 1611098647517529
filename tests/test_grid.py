"""The grid's construction, without Ray: options from the config fields, the product, names, keys, records."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gnp import config
from gnp.config import FIELDS, RUNTIME, TrainConfig, config_key, option, trial_key
from gnp.dataset_id import dataset_identity
from gnp.errors import UserError
from gnp.recipes import get_recipe
from jobs import estimate, local, options
from jobs import results as res

ROOT = Path(__file__).resolve().parent.parent


def configs(*argv):
    return options.grid_configs(options.parse_args(["--recipe", "digits", *argv]))


def cells(cfgs):
    return sorted((c.variant, c.alpha, c.r, c.seed) for c in cfgs)


# ---- keys: pinned to the previous release ---------------------------------------------------------------


def test_trial_keys_are_those_of_the_previous_release():
    assert trial_key(get_recipe("digits", variant="gnp", alpha=0.8, r=0.05, seed=0)) == "fbc74d021ca6-s0"
    assert trial_key(get_recipe("digits", variant="standard", alpha=0.0, r=0.0, seed=1)) == "38f5bb4e1e26-s1"
    assert trial_key(get_recipe("digits", variant="sam", alpha=1.0, seed=2, batch_size=32, epochs=2)) \
        == "ccdc6c87fdc6-s2"


def test_the_grid_gives_the_same_keys():
    keys = {trial_key(c) for c in configs("--seeds", "0,1", "--alpha", "0,0.8", "--r", "0.05")}
    assert keys == {"fbc74d021ca6-s0", "fbc74d021ca6-s1", "38f5bb4e1e26-s0", "38f5bb4e1e26-s1"}
    (sam,) = configs("--seeds", "2", "--alpha", "1", "--batch-size", "32", "--epochs", "2")
    assert trial_key(sam) == "ccdc6c87fdc6-s2"


@dataclasses.dataclass
class WithANewOption(TrainConfig):
    later_option: int = option(7, "an option added after these keys were made")


def test_a_new_field_at_its_default_leaves_keys_unchanged_and_off_it_changes_them(monkeypatch):
    monkeypatch.setattr(config, "DEFAULTS", WithANewOption())  # what key_fields compares later fields with
    before = get_recipe("digits", variant="gnp", alpha=0.8, r=0.05, seed=0)
    grown = WithANewOption(**dataclasses.asdict(before))
    assert config_key(grown) == config_key(before) and trial_key(grown) == "fbc74d021ca6-s0"
    assert config_key(grown.replace(later_option=8)) != config_key(before)
    assert config_key(before.replace(regularize_every=2)) != config_key(before)  # a later field, changed


# ---- options: one per field --------------------------------------------------------------------------------


def test_every_maths_field_is_a_grid_option_and_runtime_fields_take_one_value():
    parser = options.build_parser()
    flags = {opt for action in parser._actions for opt in action.option_strings}
    for name in FIELDS:
        if name in ("recipe", "out"):
            continue
        assert options.flag(name) in flags, name
    assert "--seeds" in flags and "--seed" not in flags
    args = options.parse_args(["--loader-workers", "3", "--data", "/x"])
    assert args.loader_workers == 3 and args.data == "/x"
    assert set(options.SINGLE_RUNTIME) == set(RUNTIME) - {"out", "seed"}


def test_values_parse_by_field_type():
    args = options.parse_args(["--seeds", "0,1", "--alpha", "-0.5,0", "--clip-grad-norm", "none,5",
                               "--channels-last", "--sync-perturbation", "true,false", "--variant-options",
                               "eta=0.1,x=2", "--mix", "paper,official"])
    assert args.seeds == [0, 1] and args.alpha == [-0.5, 0.0] and args.clip_grad_norm == [None, 5.0]
    assert args.channels_last == [True] and args.sync_perturbation == [True, False]
    assert args.variant_options == [{"eta": 0.1, "x": 2.0}] and args.mix == ["paper", "official"]


def test_negative_lists_are_joined_for_every_numeric_list_option():
    argv = options.negative_lists_joined(["--alpha", "-0.5,0", "--r", "-1", "--lr", "-0.1", "--seeds", "0"])
    assert argv == ["--alpha=-0.5,0", "--r=-1", "--lr=-0.1", "--seeds", "0"]
    assert {"--alpha", "--r", "--lr", "--epochs", "--seeds", "--weight-decay"} <= set(options.numeric_lists())


# ---- the product, scheme names, dedup ---------------------------------------------------------------------


def test_the_grid_is_the_product_with_the_schemes_named():
    got = cells(configs("--seeds", "0,1", "--alpha", "0,0.8,1"))
    assert got == sorted([("standard", 0.0, 0.0, s) for s in (0, 1)] + [("gnp", 0.8, 0.05, s) for s in (0, 1)]
                         + [("sam", 1.0, 0.05, s) for s in (0, 1)])


def test_every_cell_runs_its_first_seed_before_any_cell_its_second():
    order = [(c.seed, c.variant) for c in configs("--seeds", "0,1", "--alpha", "0,0.8,1")]
    assert order == [(0, "standard"), (0, "gnp"), (0, "sam"), (1, "standard"), (1, "gnp"), (1, "sam")]


def test_a_standard_cell_ignores_r_and_the_variant_so_it_runs_once():
    got = cells(configs("--seeds", "0", "--alpha", "0,0.5,1", "--r", "0.01,0.05", "--variant", "gnp,fgr"))
    assert got == sorted([("standard", 0.0, 0.0, 0)]
                         + [(v, a, r, 0) for v in ("gnp", "fgr") for a in (0.5, 1.0) for r in (0.01, 0.05)
                            if not (v == "gnp" and a == 1.0)]
                         + [("sam", 1.0, r, 0) for r in (0.01, 0.05)])


def test_any_option_sweeps():
    cfgs = configs("--seeds", "0", "--alpha", "0.5", "--mix", "paper,official", "--clip-grad-norm", "none,5")
    assert sorted((c.mix, c.clip_grad_norm or 0) for c in cfgs) == [
        ("official", 0), ("official", 5.0), ("paper", 0), ("paper", 5.0)]
    assert len({trial_key(c) for c in cfgs}) == 4
    (cfg,) = configs("--seeds", "0", "--alpha", "0.5", "--variant", "asam", "--variant-options", "eta=0.1")
    assert cfg.variant_options == {"eta": 0.1}


def test_the_paper_recipes_default_to_their_gpus_and_the_embedded_ones_to_cpu_workers():
    for recipe, workers, gpus in (("imagenet-vgg16bn", 4, 1.0), ("cifar10-pyramidnet272", 4, 1.0),
                                  ("digits", 2, 0.0), ("digits-cifar", 2, 0.0)):
        args = options.parse_args(["--recipe", recipe])
        assert (args.workers, args.gpus_per_worker) == (workers, gpus), recipe
    args = options.parse_args(["--recipe", "imagenet-resnet50", "--workers", "1", "--gpus-per-worker", "0"])
    assert (args.workers, args.gpus_per_worker) == (1, 0.0)


def test_the_recipe_value_is_kept_where_no_option_is_given():
    cfg = configs("--recipe", "imagenet-resnet50", "--seeds", "0", "--alpha", "0.3", "--workers", "4")[0]
    assert cfg.clip_grad_norm == 5.0 and cfg.perturbation_batch == 128 and cfg.epochs == 100
    cfg = configs("--recipe", "imagenet-resnet50", "--seeds", "0", "--alpha", "0.3", "--workers", "4",
                  "--clip-grad-norm", "none")[0]
    assert cfg.clip_grad_norm is None


@pytest.mark.parametrize("argv,message", [
    (["--alpha", "0.5", "--r", "-1"], "r must be >= 0"),
    (["--alpha", "0.5", "--r", "0"], "r must be > 0"),
    (["--batch-size", "30", "--workers", "4"], "does not split over 4 workers"),
    (["--recipe", "imagenet-resnet50", "--workers", "8"], "use 4 workers, or pass --perturbation-batch 64"),
    (["--recipe", "imagenet-vgg16bn", "--workers", "8"], "perturbs on 64 images per rank (batch 256 over 4 ranks)"),
    (["--augmentation", "rrc+filp"], "no augmentation 'rrc+filp'"),
    (["--dataset", "digits,imagenet"], "--dataset takes one value per grid"),
    (["--recipe", "nope"], "unknown recipe"),
    (["--variant-options", "eta=0.1"], "option of none of the variants"),
    (["--mix", "official", "--variant", "fgr", "--alpha", "0.5"], "mix='official'"),
])
def test_bad_grids_are_one_line_errors(argv, message):
    with pytest.raises(UserError, match=re.escape(message)):
        configs(*argv)


@pytest.mark.parametrize("argv,message", [
    (["--variant", "sam"], "--variant takes gnp, fgr, bgr, asam, db; got 'sam'"),  # α = 1 is SAM
    (["--model", "resnet-50"], "--model takes ResNet50, ResNet101"),
    (["--dataset", "cifar11"], "--dataset takes"),
])
def test_unknown_registry_names_are_refused_by_the_parser_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        options.parse_args(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and err.count("\n") == 1



@pytest.mark.parametrize("argv", [["--alpha", "x"], ["--seeds", "0.5"], ["--channels-last", "maybe"],
                                  ["--amp", "fp8"], ["--no-such-option"]])
def test_bad_values_exit_2_with_one_line_and_write_nothing(tmp_path, capfd, argv):
    from jobs import grid

    with pytest.raises(SystemExit) as info:
        grid.main(["--results", str(tmp_path / "r"), *argv])
    assert info.value.code == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not (tmp_path / "r").exists()


def grid_alone(*argv) -> subprocess.CompletedProcess:
    """python -m jobs.grid in a process of its own, which prints at the end whether it imported Ray."""
    code = ("import sys; from jobs import grid; code = grid.main(sys.argv[1:]); "
            "print('ray' in sys.modules); sys.exit(code)")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ""})


def test_bad_data_is_refused_before_ray_starts_and_writes_nothing(tmp_path):
    out = grid_alone("--data", str(tmp_path / "none"), "--results", str(tmp_path / "r"), "--seeds", "0")
    assert out.returncode == 2 and out.stdout.strip() == "False"
    assert out.stderr.strip().splitlines() == [
        f"error: dataset root {tmp_path / 'none'} does not exist; pass the folder that holds train/ and val/"]
    assert not (tmp_path / "r").exists()


# ---- the recorded grid ---------------------------------------------------------------------------------


DIGITS = dict(classes=10, train_images=1437, val_images=360, fingerprint="abc")


def record(*argv, dataset=DIGITS):
    args = options.parse_args(["--recipe", "digits", *argv])
    return options.grid_record(args, options.grid_configs(args), dataset)


def test_more_seeds_or_alphas_extend_an_experiment_and_fewer_or_other_ones_are_refused():
    before = record("--seeds", "0,1", "--alpha", "0,0.8")
    assert options.grid_conflict(before, record("--seeds", "0,1", "--alpha", "0,0.8")) is None
    assert options.grid_conflict(before, record("--seeds", "0,1,2", "--alpha", "0,0.8,1")) is None
    more = record("--seeds", "0,1", "--alpha", "0,0.8", "--mix", "paper,official")
    assert options.grid_conflict(before, more) is None
    fewer = record("--seeds", "0", "--alpha", "0,0.8")
    assert "--seeds ran 0,1; this command drops 1" in options.grid_conflict(before, fewer)
    assert "--epochs ran 15; this command drops 15" in options.grid_conflict(
        before, record("--seeds", "0,1", "--alpha", "0,0.8", "--epochs", "2"))
    other = record("--recipe", "imagenet-resnet50", "--workers", "4")
    assert options.grid_conflict(before, other).startswith("--recipe was digits")


def test_another_workers_or_dataset_is_refused_with_the_option_named():
    before = record("--seeds", "0")
    workers = options.grid_conflict(before, record("--seeds", "0", "--workers", "4"))
    assert workers.startswith("--workers was 2, now 4")
    data = options.grid_conflict(before, record("--seeds", "0", dataset={**DIGITS, "fingerprint": "def"}))
    assert data.startswith("--data holds another")


def test_a_record_of_the_earlier_imagenet_recipe_is_refused_with_what_changed():
    """The earlier recipe ran torchvision's ResNet-50 with RRC on 8 ranks of 64: its experiment cannot be
    extended by the official network on 4 ranks of 128, and the line says why."""
    now = record("--recipe", "imagenet-resnet50", "--workers", "4")
    earlier = {**now, "workers": 8, "axes": {**now["axes"], "model": ["resnet50"], "augmentation": ["rrc+flip"],
                                             "perturbation_batch": [64]}}
    del earlier["recipe_values"]  # the earlier version recorded none
    problem = options.grid_conflict(json.loads(json.dumps(earlier)), now)
    assert problem.startswith("recipe imagenet-resnet50 differs from what this experiment ran")
    for change in ("model resnet50 → ResNet50", "perturbation_batch 64 → 128", "augmentation rrc+flip → inception"):
        assert change in problem
    recorded = {**now, "recipe_values": {**now["recipe_values"], "epochs": 90}}
    assert options.grid_conflict(recorded, now).startswith(
        "recipe imagenet-resnet50 changed since this experiment ran: epochs 90 → 100")
    assert options.grid_conflict(json.loads(json.dumps(now)), now) is None


def test_a_first_release_record_is_read():
    old = dict(recipe="digits", seeds=[0, 1], alpha=[0.0, 0.8], r=[0.05], variant="gnp", trials=[])
    assert options.grid_conflict(old, record("--seeds", "0,1,2", "--alpha", "0,0.8")) is None
    assert "--seeds" in options.grid_conflict(old, record("--seeds", "0", "--alpha", "0,0.8"))


def test_the_grid_record_round_trips(tmp_path):
    rec = record("--seeds", "0")
    assert res.read_grid(str(tmp_path), "x") is None
    res.write_grid(str(tmp_path), "x", rec)
    assert res.read_grid(str(tmp_path), "x") == json.loads(json.dumps(rec)) and rec["workers"] == 2


# ---- dataset identity, rows, estimate, token -----------------------------------------------------------


def tree(root: Path, sizes: dict) -> Path:
    for path, size in sizes.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"x" * size)
    return root


def test_dataset_identity_names_the_data_not_its_path(tmp_path):
    files = {"train/a/1.JPEG": 3, "train/a/2.JPEG": 4, "train/b/3.jpg": 5, "val/a/4.JPEG": 6,
             "val/b/5.png": 7, "train/a/notes.txt": 1}
    a = dataset_identity(tree(tmp_path / "one", files))
    assert dataset_identity(tree(tmp_path / "two", files)) == a
    assert {k: a[k] for k in ("classes", "train_images", "val_images")} == dict(classes=2, train_images=3,
                                                                               val_images=2)
    resized = dataset_identity(tree(tmp_path / "three", {**files, "val/b/5.png": 8}))
    added = dataset_identity(tree(tmp_path / "four", {**files, "val/b/6.png": 7}))
    assert resized["fingerprint"] != a["fingerprint"] and added["fingerprint"] != a["fingerprint"]


def test_rows_carry_the_dataset_the_trial_time_and_unknown_keys():
    cfg = get_recipe("digits", variant="gnp", alpha=0.8, r=0.05, seed=0)
    row = dict(epoch=1, status="ok", workers=2, device="cpu", skipped_steps=3)
    (out,) = res.rows_for_trial(cfg, [row], experiment="e", seeds_planned=1, version="v", dataset_id="abc",
                                trial_wall_s=12.5)
    assert out["dataset_id"] == "abc" and out["trial_wall_s"] == 12.5 and out["skipped_steps"] == 3
    assert out["trial_key"] == "fbc74d021ca6-s0" and list(out)[:2] == ["experiment", "trial_key"]


def test_the_estimate_uses_measured_rates_of_the_same_model_and_device_kind():
    cfg = get_recipe("digits", variant="fgr", alpha=0.5, r=0.05)
    rates = [dict(model="smallcnn", device="cpu", variant="gnp", per_device=300.0, source="results"),
             dict(model="smallcnn", device="cpu", variant="standard", per_device=600.0, source="results"),
             dict(model="smallcnn", device="NVIDIA H100", variant="fgr", per_device=9e4, source="results")]
    assert estimate.rate_for(cfg, False, rates)["per_device"] == 300.0  # two passes, like gnp
    assert estimate.rate_for(cfg, True, rates)["per_device"] == 9e4
    assert estimate.rate_for(cfg.replace(model="resnet50"), False, rates) is None


def test_the_estimate_reads_bench_figures_and_says_when_it_has_none(tmp_path, monkeypatch, capsys):
    bench = dict(device="CPU (x86), 1 thread", args=dict(model="smallcnn"),
                 runs={"1 process": {"standard": dict(img_s=1000.0), "gnp": dict(img_s=500.0)}})
    (tmp_path / "step_ratio-cpu-2026-01-01.json").write_text(json.dumps(bench))
    monkeypatch.setattr(estimate, "BENCH", tmp_path)
    rates = estimate.measured_rates(str(tmp_path / "results"))
    assert {(r["device"], r["variant"], r["per_device"]) for r in rates} == {("cpu", "standard", 1000.0),
                                                                            ("cpu", "gnp", 500.0)}
    cfgs = configs("--seeds", "0", "--alpha", "0,0.8", "--epochs", "2")
    estimate.print_plan(cfgs, experiment="e", results=str(tmp_path / "results"), train_images=1000,
                        workers=2, gpus_per_worker=0)
    out = capsys.readouterr().out
    # 2 epochs × 1000 images: standard at 1000 img/s, 2000 s; gnp at 500, 4000 s; one at a time
    assert "2 trials, 2 to run: 0.00167 device-hours to go, 0.00167 in all; about 0.000833 h of wall time" in out
    assert "cpu (step_ratio-cpu-2026-01-01.json)" in out and "so these hours are a lower bound" in out
    monkeypatch.setattr(estimate, "BENCH", tmp_path / "none")
    estimate.print_plan(cfgs, experiment="e", results=str(tmp_path / "results"), train_images=1000,
                        workers=2, gpus_per_worker=1)
    out = capsys.readouterr().out  # a GPU grid without measurements: the target, scaled, and said so
    assert out.count("assumed (a target scaled by FLOPs)") == 2 and "(a target, not a measurement)" in out
    unknown = [c.replace(model="resnet18", image_size=32) for c in cfgs]  # no multiply-adds on record at 32 px
    estimate.print_plan(unknown, experiment="e", results=str(tmp_path / "results"), train_images=1000,
                        workers=2, gpus_per_worker=1)
    assert "2 trial(s) without a rate" in capsys.readouterr().out


def test_the_assumed_rate_scales_the_target_by_multiply_adds_and_passes():
    standard = estimate.assumed_rate(get_recipe("imagenet-resnet50", variant="standard", alpha=0.0, r=0.0))
    gnp = estimate.assumed_rate(get_recipe("imagenet-resnet101", alpha=0.3))
    assert standard["per_device"] == estimate.TARGET
    assert gnp["per_device"] == pytest.approx(estimate.TARGET * 4.089 / 7.801 / 2)
    # the grid's 12 ResNet-50 trials at the target: the 249 device-hours the README quotes
    hours = [100 * 1_281_167 / estimate.assumed_rate(c)["per_device"] / 3600
             for c in configs("--recipe", "imagenet-resnet50", "--seeds", "0,1,2", "--alpha", "0,0.2,0.3,1")]
    assert round(sum(hours)) == 249
    assert estimate.wall_hours([3.0, 5.9, 5.9, 3.0], 2) == pytest.approx(8.9)


def test_every_registered_network_has_its_multiply_adds_on_record():
    from gnp.models import REGISTRY
    from gnp.recipes import RECIPES

    assert {(c.model, c.image_size) for c in RECIPES.values()} <= set(estimate.GMACS)
    assert {m for m, _ in estimate.GMACS} == set(REGISTRY)


@pytest.mark.parametrize("argv,message", [
    (["--recipe", "cifar10-wrn28-10"], "recipe 'cifar10-wrn28-10' (cifar10) needs --data: CIFAR-10"),
    (["--recipe", "cifar100-vgg16", "--data", "{tmp}/none"], "CIFAR-100 root {tmp}/none does not exist"),
    (["--recipe", "cifar10-vgg16", "--data", "{tmp}"], "{tmp} holds no CIFAR-10: expected cifar-10-batches-py/"),
    (["--recipe", "digits-cifar", "--augmentation", "crop"], "dataset 'digits-cifar' has no augmentation 'crop'"),
    (["--recipe", "imagenet-resnet50", "--model", "WideResNet_28_10x"], "--model takes"),
])
def test_a_bad_cifar_grid_is_one_line_before_ray(tmp_path, argv, message):
    out = grid_alone(*[a.format(tmp=tmp_path) for a in argv], "--dry-run", "--results", str(tmp_path / "r"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and message.format(tmp=tmp_path) in out.stderr
    assert not (tmp_path / "r").exists()


def test_the_dry_run_prints_the_trials_and_exits_before_ray(tmp_path):
    out = grid_alone("--seeds", "0,1", "--alpha", "0,1", "--dry-run", "--results", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "False" and "38f5bb4e1e26-s1" in out.stdout
    assert lines[-3].startswith("4 trials, 4 to run") and "lower bound" in lines[-2]
    assert not (tmp_path / "r").exists()


def test_the_token_is_made_private_and_a_readable_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "ray" / "auth_token"))
    path = local.private_token()
    assert oct(path.stat().st_mode & 0o777) == "0o600" and len(path.read_text()) == 64
    assert local.private_token() == path
    path.chmod(0o644)
    with pytest.raises(UserError, match="chmod 600"):
        local.private_token()


@pytest.mark.parametrize("workers,gpus,line", [
    (4, 1.0, "each trial: 4 workers × 1 GPU, 64 images per rank; an 8-GPU node runs 2 trial(s) at once"),
    (1, 0.25, "each trial: 1 workers × 0.25 GPU (4 trials share a GPU), 256 images per rank; an 8-GPU node "
              "runs 32 trial(s) at once"),
])
def test_the_dry_run_shows_how_trials_pack_onto_gpus(workers, gpus, line):
    from gnp.recipes import RECIPES

    assert estimate.packing([RECIPES["cifar10-wrn28-10"]], workers, gpus) == line


def test_the_dry_run_prices_a_holdout_grid_on_the_images_it_trains_on(tmp_path, capsys):
    from gnp.recipes import get_recipe

    plain = get_recipe("digits-cifar", seed=0)
    held = plain.replace(holdout_images=437)
    hours = [estimate.print_plan([c], experiment="e", results=str(tmp_path), train_images=1437, workers=2,
                                 gpus_per_worker=1.0) for c in (plain, held)]
    (a,), (b,) = (h.values() for h in hours)
    assert b / a == pytest.approx(1000 / 1437)
    assert "15,000" in capsys.readouterr().out  # 15 epochs × the 1,000 images left to train on


def test_a_rate_from_results_comes_before_a_benchmarks_whatever_their_sizes():
    from jobs.estimate import rate_for

    cfg = get_recipe("digits").replace(variant="gnp", alpha=0.8)
    bench = dict(model=cfg.model, device="cpu", per_device=900.0, source="step_ratio-cpu.json")
    results = dict(model=cfg.model, device="cpu", per_device=100.0, source="results")
    rates = [{**bench, "variant": "gnp"}, {**bench, "variant": "sam", "per_device": 50.0},
             {**results, "variant": "sam"}]  # the results have only SAM (two passes as well): still first
    assert rate_for(cfg, False, rates)["source"] == "results"
    assert rate_for(cfg, False, rates[:2])["per_device"] == 900.0  # no results: the benchmark's own variant


def test_the_estimate_reads_the_gpu_steps_eager_figures_committed_under_bench_results(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "bench"))
    from gpu_steps import Record  # the writer of A.jsonl

    (tmp_path / "gpu-h100").mkdir()
    record = Record(tmp_path / "gpu-h100" / "A.jsonl", "A")
    record("preflight", gpu="NVIDIA H100 80GB HBM3", device_type="cuda")
    where = dict(recipe="imagenet-resnet50", model="ResNet50", batch=128, image_size=224, device_type="cuda")
    for scheme, img_s in (("standard", 2900.0), ("gnp", 1500.0), ("amortized_1/4", 2500.0)):
        record("step", **where, scheme=scheme, img_s=img_s)
    record("skipped", reason="cap", **where, scheme="sam")
    monkeypatch.setattr(estimate, "BENCH", tmp_path)
    rates = estimate.measured_rates(str(tmp_path / "results"))
    assert {(r["device"], r["variant"], r["per_device"], r["source"]) for r in rates} == {
        ("NVIDIA H100 80GB HBM3", "standard", 2900.0, "gpu-h100/A.jsonl"),
        ("NVIDIA H100 80GB HBM3", "gnp", 1500.0, "gpu-h100/A.jsonl")}
    cfg = get_recipe("imagenet-resnet50", variant="sam", alpha=1.0)
    assert estimate.rate_for(cfg, True, rates)["per_device"] == 1500.0  # two passes, as gnp
    assert estimate.rate_for(cfg, False, rates) is None  # not a CPU figure
