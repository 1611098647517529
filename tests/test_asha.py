"""--asha without a cluster: which trials count as done, how a stopped trial is written from its last
checkpoint, and that every table counts it beside the mean, never in it (the Ray run: tests/test_ray.py)."""

import json

from test_analysis import trial_rows, write

from analysis import format_table, load_results, summarize
from gnp.recipes import get_recipe
from jobs import results as res
from jobs.driver import record_stopped


def test_a_stopped_trial_is_done_only_for_a_grid_that_stops_early(tmp_path):
    rows = trial_rows(alpha=1, r=0.1, seed=0, top1=[30], epochs=3, experiment="exp")
    for row in rows:
        row["status"] = "stopped"
    write(tmp_path / "exp", rows)
    key = rows[0]["trial_key"]
    assert not res.finished_trial(str(tmp_path), "exp", key, 3)  # a final stage continues it
    assert res.finished_trial(str(tmp_path), "exp", key, 3, stopped_is_done=True)


def test_stopped_trials_are_counted_beside_the_mean_never_in_it(tmp_path):
    folder = tmp_path / "exp"
    for seed, best in enumerate([20, 22]):
        write(folder, trial_rows(alpha=1, r=0.1, seed=seed, top1=[best + 5, best, best], seeds_planned=3))
    stopped = trial_rows(alpha=1, r=0.1, seed=2, top1=[5], seeds_planned=3)  # better so far: left out anyway
    write(folder, [{**row, "status": "stopped"} for row in stopped])
    cell = summarize(load_results(folder)).iloc[0]
    assert (cell["test_top1_err_mean"], cell["n"], cell["stopped"], cell["incomplete"]) == (21.0, 2, 1, True)
    table = format_table(load_results(folder), kind="cells")
    assert "1 stopped" in table and "ASHA ended early" in table
    assert "stopped" in format_table(load_results(folder), kind="trials")


def _run(tmp_path) -> dict:
    return dict(results=str(tmp_path / "results"), experiment="exp", train_storage=str(tmp_path / "train"),
                placement=dict(workers=1), identity=dict(experiment="exp", seeds_planned=1, version="test",
                                                         dataset_id=None))


def _checkpoint(tmp_path, name: str, epochs: int, status: str = "ok") -> str:
    folder = tmp_path / "ckpt" / name
    folder.mkdir(parents=True)
    rows = [dict(epoch=e, test_top1_err=50.0 - e, test_top5_err=10.0, workers=1, device="cpu", status="ok")
            for e in range(1, epochs + 1)]
    rows[-1]["status"] = status
    (folder / "rows.json").write_text(json.dumps(rows))
    return str(folder)


def test_record_stopped_writes_a_trial_stopped_short_as_stopped_and_one_that_ended_as_it_ended(tmp_path):
    """ASHA stops a trial at its last epoch too, and Tune may end it before it wrote its file: that trial
    finished (or diverged) and must not be labelled stopped."""
    base = get_recipe("digits-cifar").replace(epochs=3, alpha=1.0, r=0.1)
    short, full, gone = (base.replace(seed=s) for s in (0, 1, 2))
    checkpoints = {res.trial_key(short): _checkpoint(tmp_path, "short", 1),
                   res.trial_key(full): _checkpoint(tmp_path, "full", 3),
                   res.trial_key(gone): _checkpoint(tmp_path, "gone", 2, status="diverged")}
    run = _run(tmp_path)
    assert record_stopped(checkpoints, {}, [short, full, gone], run) == [res.trial_key(short)]
    df = load_results(tmp_path / "results" / "exp").set_index("seed")
    assert df.loc[[0], "status"].tolist() == ["stopped"]
    assert df.loc[[1], "status"].tolist() == ["ok"] * 3 and df.loc[[2], "status"].tolist() == ["ok", "diverged"]
    assert res.finished_trial(run["results"], "exp", res.trial_key(full), 3)
    # a trial already written (finished by its own driver) or failed is left as it is
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "results" / "exp").glob("*.parquet")}
    assert record_stopped(checkpoints, {res.trial_key(short): "error"}, [short, full, gone], run) == []
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "results" / "exp").glob("*.parquet")} == before
