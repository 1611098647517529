"""Ray Train: one trial is one TorchTrainer whose workers run gnp's loop as DDP (NCCL on GPU, gloo on CPU).

Rank 0 reports a checkpoint every epoch under a deterministic name (epoch_0001, ...), uploaded in the
background while the next epoch trains (the other ranks never wait for storage); a restarted worker group
reads the latest one committed with `ray.train.get_checkpoint()` and gnp resumes it exactly.
"""

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import ray.train
import ray.train.torch
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    CheckpointConsistencyMode,
    CheckpointUploadMode,
    FailureConfig,
    ScalingConfig,
)
from ray.train.torch import TorchConfig, TorchTrainer
from ray.train.v2.api.callback import UserCallback

from gnp import checkpoint, storage
from gnp.config import TrainConfig
from jobs import results
from jobs.local import LOOPBACK
from jobs.options import Placement
from jobs.ray_private import WORKER_GROUP_START_TIMEOUT_ENV, TorchBackend, set_torch_distributed_env_vars

# A worker group that cannot start waits this long per try (an autoscaled GPU node may need an hour to boot,
# pull the image and stage ImageNet), and is tried this many more times, then the trial fails: Train's
# default is a traceback a minute, forever.
WORKER_GROUP_START_TIMEOUT_S = 3600
WORKER_GROUP_START_RETRIES = 3

_listener: socket.socket | None = None  # rank 0's rendezvous socket, from bind to the process group's start


def _listen_on_loopback() -> tuple[str, int]:
    """Rank 0: the node's address, and a rendezvous port on 127.0.0.1 if that is where the node is."""
    global _listener
    address = ray.util.get_node_ip_address()
    if address != LOOPBACK:
        return address, 0
    _listener = socket.socket()
    _listener.bind((LOOPBACK, 0))
    _listener.listen()
    return address, _listener.getsockname()[1]


def _join_on_loopback(backend: str, world_rank: int, world: int, port: int, timeout_s: int) -> None:
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    if world_rank == 0:
        store = dist.TCPStore(LOOPBACK, port, world, True, timeout=timeout, master_listen_fd=_listener.fileno())
    else:
        store = dist.TCPStore(LOOPBACK, port, world, False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=world_rank, world_size=world, timeout=timeout)


class _LoopbackBackend(TorchBackend):
    """On a node bound to 127.0.0.1 (the local cluster), the rendezvous store listens there too.

    torch's TCPStore listens on every interface; Ray Train's setup gives it no say. Elsewhere (a real
    cluster, whose nodes must reach each other) this is Ray Train's own setup, unchanged.
    """

    def on_start(self, worker_group, backend_config):
        if len(worker_group) == 1:
            return super().on_start(worker_group, backend_config)
        address, port = worker_group.execute_single(0, _listen_on_loopback)
        if address != LOOPBACK:
            return super().on_start(worker_group, backend_config)
        worker_group.execute(set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(rank, _join_on_loopback, backend=backend_config.backend,
                                                   world_rank=rank, world=len(worker_group), port=port,
                                                   timeout_s=backend_config.timeout_s)
                 for rank in range(len(worker_group))])


class LoopbackTorchConfig(TorchConfig):
    @property
    def backend_cls(self):
        return _LoopbackBackend


class TrialClock(UserCallback):
    """A trial's wall time over every driver that ran it: a resumed trial adds its own time to what the
    earlier drivers had saved at their last epoch report (<run folder>/trial_wall_s.json). The time after an
    interrupted driver's last report is not counted: the figure is a lower bound, never an overcount."""

    FILENAME = "trial_wall_s.json"

    def __init__(self, storage: str, name: str):
        self.storage, self.name = storage, name
        self.earlier = (results.read_json(*self._file()) or {}).get("trial_wall_s", 0.0)
        self.start = time.time()  # wall clock: the report arrives in Train's controller, another process

    def _file(self):
        filesystem, root = storage.resolve(self.storage)
        return filesystem, f"{root.rstrip('/')}/{self.name}/{self.FILENAME}"

    def elapsed(self) -> float:
        return self.earlier + time.time() - self.start

    def after_report(self, run_context, metrics, checkpoint):
        results.write_json(*self._file(), {"trial_wall_s": self.elapsed()})


def quiet_console() -> None:
    """Ray Train logs each report (the metrics dict, per rank and epoch) and each checkpoint at INFO on the
    worker's console, which the driver shows: hundreds of lines in a small grid, the progress table lost among
    them. The console keeps warnings and errors; Ray's log files (logs/train/ in the session) keep it all."""
    for logger in (logging.getLogger(), logging.getLogger("ray.train")):
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.WARNING)


def report_epoch(row: dict, folder: str | None, upload=CheckpointUploadMode.ASYNC) -> None:
    """Every rank's report of an epoch; rank 0's folder is uploaded (by default while the next epoch trains,
    bench/checkpoint_upload.py measures both), then deleted by Ray."""
    ray.train.report(
        row,
        checkpoint=Checkpoint.from_directory(folder) if folder else None,
        checkpoint_dir_name=checkpoint.epoch_folder_name(row["epoch"]),
        checkpoint_upload_mode=upload,
        delete_local_checkpoint_after_upload=True,
    )


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Train worker: gnp.train with Ray's device, checkpoint and report.

    gnp.loop is imported here, not at the top: the trial driver and Train's controller, which import this
    module too, then never load torchvision (seconds of CPU per process, per trial)."""
    from gnp.loop import train

    quiet_console()
    # This worker's epoch checkpoints before upload, named by trial and rank: a restarted worker of the trial
    # deletes what its killed predecessor on this node left (an upload cut short leaves its folder).
    out = Path(tempfile.gettempdir()) / f"{config['scratch']}-{ray.train.get_context().get_world_rank()}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = TrainConfig(**config["train"]).replace(out=str(out))
    resume = None
    latest = ray.train.get_checkpoint()
    if latest is not None:
        with latest.as_directory() as folder:
            resume = checkpoint.load(Path(folder) / checkpoint.FILENAME)

    try:
        train(cfg, resume=resume, report=report_epoch, device=ray.train.torch.get_device(),
              hand_over_checkpoints=True)
        # Wait until every upload is committed (Ray deletes each epoch folder then): the folder is empty after.
        ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)
    finally:
        # An epoch folder still uploading is Ray's to delete: removed under it, an upload could be committed
        # without its checkpoint.pt. The latest links go.
        for name in (checkpoint.FILENAME, checkpoint.ROWS_FILENAME):
            (out / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            os.rmdir(out)  # empty, unless the run failed with an upload in flight


def scratch_name(storage: str, name: str) -> str:
    """The workers' local folder name of one trial: the same run in two storages never shares it."""
    return f"gnp-worker-{hashlib.sha256(f'{storage}/{name}'.encode()).hexdigest()[:16]}"


def fit_trial(cfg: TrainConfig, placement: Placement, *, storage: str, name: str, max_failures: int = 3,
              callbacks=(), loop=train_loop_per_worker) -> ray.train.Result:
    """Train one configuration on `placement.workers` DDP workers; reusing `name` resumes that run.

    `loop` is the per-worker function (tests wrap train_loop_per_worker to kill a worker mid-run).
    """
    if not placement.use_gpu and cfg.threads == 0:
        cfg = cfg.replace(threads=max(1, int(placement.cpus_per_worker)))
    os.environ.setdefault(WORKER_GROUP_START_TIMEOUT_ENV, str(WORKER_GROUP_START_TIMEOUT_S))  # to the controller
    trainer = TorchTrainer(
        loop,
        train_loop_config={"train": dataclasses.asdict(cfg), "scratch": scratch_name(storage, name)},
        # STRICT_PACK: all of a trial's workers on one node (no EFA here: DDP across nodes would crawl)
        scaling_config=ScalingConfig(num_workers=placement.workers, use_gpu=placement.use_gpu,
                                     resources_per_worker=placement.resources(),
                                     placement_strategy="STRICT_PACK"),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage, callbacks=list(callbacks),
            failure_config=FailureConfig(max_failures=max_failures,
                                         controller_failure_limit=WORKER_GROUP_START_RETRIES),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        torch_config=LoopbackTorchConfig(backend="nccl" if placement.use_gpu else "gloo"),
    )
    return trainer.fit()


def rows_of(result: ray.train.Result) -> list[dict]:
    """Every epoch's metrics row, from rows.json in the run's latest checkpoint (no model download)."""
    ckpt = result.checkpoint
    with ckpt.filesystem.open_input_stream(f"{ckpt.path}/{checkpoint.ROWS_FILENAME}") as stream:
        return json.loads(stream.read())


def rows_at(checkpoint_path: str) -> list[dict]:
    """The same from a checkpoint's path (a local folder or a URI): what Tune saw last of a stopped trial."""
    return results.read_json(*storage.resolve(f"{checkpoint_path.rstrip('/')}/{checkpoint.ROWS_FILENAME}"))
