"""Held-out training images (--holdout-images): one fixed draw for every seed and trial, never trained on,
evaluated every epoch into the rows; the analysis picks on them when told to."""

import numpy as np
import pytest
import torch

from gnp import cifar, datasets
from gnp.data import dataset_loaders, held_out
from gnp.errors import UserError
from gnp.loop import train
from gnp.recipes import get_recipe


def loaders(seed, holdout):
    spec = datasets.get("digits-cifar")
    return dataset_loaders(spec, spec.root(None), image_size=32, augmentation="basic", batch_size=64, workers=0,
                           rank=0, world=1, seed=seed, device=torch.device("cpu"), holdout_images=holdout)


def test_the_held_out_images_are_one_draw_for_every_seed_and_never_trained_on():
    spec = datasets.get("digits-cifar")
    images, labels = cifar.read(spec.root(None), spec.cifar_format)["train"]
    (kept, kept_labels), (held, held_labels) = held_out(images, labels, 300)
    assert len(held) == 300 and len(kept) == len(images) - 300
    rows = {row.tobytes() for row in images.reshape(len(images), -1)}
    assert len(rows) == len(images), "the digits hold duplicate images: the disjointness check below is void"
    assert not {r.tobytes() for r in kept.reshape(len(kept), -1)} & {r.tobytes() for r in held.reshape(300, -1)}
    a, b = loaders(0, 300), loaders(7, 300)
    assert torch.equal(a.holdout.split.images, b.holdout.split.images)  # the run's seed does not move it
    assert torch.equal(a.holdout.split.images, torch.as_tensor(held)) and len(a.train.split) == len(kept)
    assert len(np.unique(held_labels)) == 10 and loaders(0, 0).holdout is None


def test_rows_carry_the_held_out_error_and_the_analysis_picks_on_it(tmp_path):
    import pandas as pd

    from analysis.summary import trial_scores

    rows = train(get_recipe("digits-cifar", out=str(tmp_path / "run"), epochs=2, batch_size=64, holdout_images=300,
                            loader_workers=0, threads=1))
    assert all(r["holdout_images"] == 300 and 0 <= r["holdout_top1_err"] <= 100 for r in rows)
    assert rows[0]["val_images"] == 360  # the test set is untouched
    df = pd.DataFrame(rows).assign(trial_key="k-s0", experiment="e", config_key="k", recipe="digits-cifar",
                                   dataset="digits-cifar", augmentation="basic", model="smallcnn",
                                   seeds_planned=1)
    df.loc[0, "holdout_top1_err"], df.loc[1, "holdout_top1_err"] = 1.0, 2.0  # epoch 1 best held out
    df.loc[0, "test_top1_err"], df.loc[1, "test_top1_err"] = 9.0, 3.0  # epoch 2 best on the test set
    assert trial_scores(df, "holdout")["scored_epoch"].item() == 1
    assert trial_scores(df, "best")["scored_epoch"].item() == 2


def test_holding_out_is_refused_where_it_cannot_hold():
    with pytest.raises(UserError, match="holdout_images is a count of CIFAR training images"):
        get_recipe("digits", holdout_images=100)
    with pytest.raises(UserError, match="--holdout-images 5000 must be between 1 and the 1436"):
        loaders(0, 5000)
