"""The ViTs (official layout, built with timm) and their recipes: parameter counts, the official code's
dropout, GELU and initialization, drop path, and the AdamW recipe trained, resumed and refused on the CPU."""

import math
import subprocess
from pathlib import Path

import pytest
import torch
from test_train import Crash, comparable, crash_after_epoch
from torch import nn

from gnp import checkpoint
from gnp.loop import Run, train
from gnp.models import build_model
from gnp.recipes import RECIPES, get_recipe

FAST_VIT = dict(epochs=2, batch_size=64, loader_workers=0, threads=1)


@pytest.mark.parametrize("name,classes,size,count", [
    ("ViT_TI16", 10, 32, 5_362_762), ("ViT_S16", 10, 32, 21_342_346),
    ("ViT_S16", 100, 48, 21_342_346 + 90 * 385 + (145 - 65) * 384),  # 90 more head units, 80 more tokens
])
def test_parameter_counts_are_the_official_networks(name, classes, size, count):
    model = build_model(name, classes, size)
    assert sum(p.numel() for p in model.parameters()) == count
    assert model.patch_embed.proj.kernel_size == (4, 4)


def test_dropout_gelu_and_initialization_are_the_official_codes():
    torch.manual_seed(0)
    model = build_model("ViT_TI16", 10, 32)
    block = model.blocks[0]
    assert [m.p for m in (model.pos_drop, block.attn.proj_drop, block.mlp.drop1, block.mlp.drop2)] == [0.1] * 4
    assert block.attn.attn_drop.p == 0.1 and model.head_drop.p == 0.0
    assert block.mlp.act.__class__.__name__ == "GELUTanh" and block.norm1.eps == 1e-6
    assert torch.count_nonzero(model.cls_token) == 0 and torch.count_nonzero(model.head.weight) == 0
    bound = math.sqrt(6 / (192 + 192))  # Xavier-uniform of each (d, d) q, k, v, not of the fused (d, 3d)
    for part in block.attn.qkv.weight.chunk(3):
        assert 0.98 * bound < part.abs().max() <= bound
    assert torch.count_nonzero(block.attn.qkv.bias) == 0 and 0 < block.mlp.fc1.bias.abs().max() < 1e-5
    assert 0.015 < model.pos_embed.std() < 0.025


def test_drop_path_reaches_the_blocks_and_is_off_by_default():
    assert isinstance(build_model("ViT_TI16", 10, 32).blocks[-1].drop_path1, nn.Identity)
    model = build_model("ViT_TI16", 10, 32, drop_path=0.1)
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)  # timm: linear over the depth


def test_the_vit_recipes_are_the_official_scripts():
    basic, heavy, mixup = (RECIPES[f"cifar10-vit-s-{s}"] for s in ("basic", "heavy", "mixup"))
    assert (basic.optimizer, basic.weight_decay_mode, basic.lr, basic.weight_decay, basic.epochs) == (
        "adamw", "base", 1e-3, 0.3, 200)
    assert (basic.batch_size, basic.perturbation_batch, basic.r, basic.alpha) == (256, 64, 0.1, 0.8)
    assert (heavy.image_size, heavy.augmentation, heavy.lr, heavy.weight_decay, heavy.epochs) == (
        48, "heavy", 5e-4, 0.03, 1200)
    assert heavy.label_smoothing > 0 and heavy.drop_path > 0
    assert (mixup.image_size, mixup.augmentation, mixup.drop_path) == (32, "mixup", 0.0)
    warm = RECIPES["cifar100-vit-ti-basic-grwarmup"]
    assert (warm.warmup_epochs, warm.gr_warmup, warm.gr_warmup_epochs, warm.alpha) == (40, "zero", 40, 1.0)


def vit_digits(tmp_path, **overrides):
    return get_recipe("digits-cifar-vit", out=str(tmp_path / "run"), **{**FAST_VIT, **overrides})


def test_the_adamw_recipe_trains_resumes_exactly_and_checkpoints_adamws_state(tmp_path):
    cfg = dict(epochs=2, drop_path=0.1, label_smoothing=0.1)  # drop path and dropout: the generators matter
    straight = train(vit_digits(tmp_path / "a", **cfg))
    assert straight[-1]["train_loss"] < straight[0]["train_loss"] and straight[0]["lr"] > 0

    with pytest.raises(Crash):
        train(vit_digits(tmp_path / "b", **cfg), report=crash_after_epoch(1))
    state = checkpoint.load(tmp_path / "b" / "run" / checkpoint.FILENAME)
    assert {"exp_avg", "exp_avg_sq"} <= set(state["optimizer"]["state"][0])
    resumed = train(vit_digits(tmp_path / "b", **cfg), resume=state)
    assert comparable(resumed) == comparable(straight)


def test_the_first_step_of_a_warmup_has_learning_rate_zero(tmp_path):
    run = Run(vit_digits(tmp_path, epochs=3, warmup_epochs=1))
    assert isinstance(run.optimizer.base_optimizer, torch.optim.AdamW)
    assert run.optimizer.base_optimizer.param_groups[0]["lr"] == 0.0
    assert run.optimizer.param_groups[0]["weight_decay"] == 0.05 and run.optimizer.param_groups[0]["l2"] == 0


def test_the_zero_gr_warmup_shares_the_recipes_warmup_epochs(tmp_path):
    rows = train(vit_digits(tmp_path, epochs=2, warmup_epochs=1, gr_warmup="zero", gr_warmup_epochs=1))
    assert rows[0]["regularized_steps"] == 0 and rows[1]["regularized_steps"] == 1437 // 64


@pytest.mark.parametrize("recipe,sweep", [("cifar10-vit-s-basic", None), ("cifar100-vit-ti-heavy", None),
                                          ("cifar10-wrn28-10", "--augmentation basic,cutout")])
def test_make_cifar_runs_a_vit_recipe_as_its_own_column(recipe, sweep):
    """A ViT recipe's settings are its column (basic and heavy differ in more than the augmentation): the
    paper grid must not sweep the CNNs' basic/cutout over it."""
    root = Path(__file__).resolve().parent.parent
    command = subprocess.run(["make", "-s", "-n", "--no-print-directory", "cifar", "DATA=/data/cifar",
                              f"RECIPE={recipe}"], cwd=root, capture_output=True, text=True, check=True).stdout
    assert f"--recipe {recipe} " in command and "--seeds 0,1,2,3,4 " in command
    assert (sweep in command) if sweep else ("--augmentation" not in command)
