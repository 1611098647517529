"""--smoke without a cluster: which trials it runs, the step cap it gives them, and what it refuses
(the run on the test cluster: tests/test_ray.py)."""

from gnp.loop import Run
from gnp.recipes import get_recipe
from jobs.smoke import smoke_configs


def test_the_first_trial_of_each_kind_of_step_one_epoch_of_the_steps_asked():
    base = get_recipe("digits")
    grid = [base.replace(variant=v, alpha=a, seed=s) for s in (0, 1)
            for v, a in (("standard", 0.0), ("gnp", 0.8), ("sam", 1.0), ("gnp", 0.0), ("db", 0.5))]
    chosen = smoke_configs(grid, 7)
    assert [(c.variant, c.alpha, c.seed) for c in chosen] == [("standard", 0.0, 0), ("gnp", 0.8, 0), ("db", 0.5, 0)]
    assert all(c.epochs == 1 and c.max_steps_per_epoch == 7 for c in chosen)


def test_an_epoch_ends_after_max_steps_per_epoch(digits_root, tmp_path):
    run = Run(get_recipe("digits", out=str(tmp_path), max_steps_per_epoch=3, loader_workers=0, device="cpu"))
    (*sums, seen, steps, regularized), _ = run.train_one_epoch()
    assert run.steps_per_epoch == 3 and steps == 3 and seen == 3 * run.cfg.batch_size
