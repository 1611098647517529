"""The result table's one declaration: one row per trial per epoch, as gnp.loop reports it (EPOCH_FIELDS)
with the trial's identity the grid's writer adds (jobs.results.rows_for_trial), read back by analysis/.

The loop, the writer and the reader all use this module, so the three can never drift apart (tests check
the loop's row and the writer's identity against it).
Errors are in percent (0-100), as in the paper's tables; `wall_s` is the epoch's wall time, so a trial's
device-hours are sum(wall_s) × workers / 3600. Columns added after files were first written come last, are
nullable, and are listed in OPTIONAL: a file without them loads with nulls there.
"""

import pyarrow as pa

RESULT_SCHEMA = pa.schema(
    [
        pa.field("experiment", pa.string(), nullable=False),
        pa.field("trial_key", pa.string(), nullable=False),  # hash of the config without seed, plus "-s<seed>"
        pa.field("config_key", pa.string(), nullable=False),  # hash of the config without the seed
        pa.field("recipe", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("augmentation", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),  # a gnp.variants name: standard, gnp, sam, fgr, bgr, asam, db
        pa.field("alpha", pa.float64(), nullable=False),
        pa.field("r", pa.float64(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("seeds_planned", pa.int64(), nullable=False),  # seeds the grid asked for this config
        pa.field("epoch", pa.int64(), nullable=False),  # 1-based
        pa.field("epochs", pa.int64(), nullable=False),  # planned epochs of the trial
        pa.field("train_loss", pa.float64()),
        pa.field("train_err", pa.float64()),  # percent
        pa.field("test_top1_err", pa.float64()),  # percent
        pa.field("test_top5_err", pa.float64()),  # percent
        # ‖∇L(θ)‖ of the data loss (L2 term excluded) on each rank's own batch at θ, averaged over the ranks
        # and the epoch's steps (steps with a non-finite norm, i.e. fp16 overflows, left out); the same
        # quantity for every scheme
        pa.field("grad_norm", pa.float64()),
        pa.field("lr", pa.float64()),
        pa.field("images_per_s", pa.float64()),  # training throughput, all workers together
        pa.field("wall_s", pa.float64()),  # this epoch's wall seconds
        pa.field("workers", pa.int64(), nullable=False),
        pa.field("device", pa.string(), nullable=False),  # e.g. "cpu", "NVIDIA H100 80GB HBM3"
        pa.field("status", pa.string(), nullable=False),  # ok | stopped (early, by ASHA) | diverged | failed
        pa.field("code_version", pa.string(), nullable=False),
        # the trial's wall seconds from Ray starting it (before its worker group) to its result file, summed
        # over restarts; the same on every row of the trial; null where not recorded
        pa.field("trial_wall_s", pa.float64()),
        pa.field("val_images", pa.int64()),  # validation images evaluated (every one exactly once)
        pa.field("skipped_steps", pa.int64()),  # fp16 steps the GradScaler skipped for overflow (not divergence)
        pa.field("regularized_steps", pa.int64()),  # steps that took the regularized update (two passes, or db's double backprop), not a plain one
        # the dataset's identity: classes, image counts and a fingerprint of its file list (not its path)
        pa.field("dataset_id", pa.string()),
        # when the epoch began and its evaluation ended, in Unix seconds (rank 0's clock): a run's timeline,
        # its gaps (starts, restarts, checkpoints) included
        pa.field("started_at", pa.float64()),
        pa.field("ended_at", pa.float64()),
        # every field of the trial's configuration that changes what it computes (gnp.config.maths_fields), as
        # JSON; analysis.load_results adds a column for each field that varies among the rows it loads
        pa.field("config", pa.string()),
        # top-1 error on the training images the trial held out (holdout_images; null without them): what an
        # honest selection of r, α and the epoch reads instead of the test error
        pa.field("holdout_top1_err", pa.float64()),
        pa.field("holdout_images", pa.int64()),
    ]
)

EPOCH_FIELDS = ("epoch", "epochs", "variant", "alpha", "r", "seed", "train_loss", "train_err", "test_top1_err",
                "test_top5_err", "val_images", "holdout_top1_err", "holdout_images", "grad_norm", "skipped_steps",
                "regularized_steps", "lr", "images_per_s", "wall_s", "workers", "device", "status", "started_at",
                "ended_at")  # what gnp.loop reports each epoch; the writer adds the other columns

OPTIONAL = ("trial_wall_s", "val_images", "skipped_steps", "regularized_steps", "dataset_id", "started_at",
            "ended_at", "config", "holdout_top1_err", "holdout_images")

STATUSES = ("ok", "stopped", "diverged", "failed")  # a trial's status: the last of its rows' in this order
LOST = STATUSES[1:]  # a trial of these is counted beside a mean, never in it
