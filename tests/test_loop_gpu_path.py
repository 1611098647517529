"""What a GPU run's speed and scores depend on in the loop, checked on the CPU: DDP before torch.compile,
evaluation compiled, and top-1/top-5 scored from float32 logits under bf16 autocast."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gnp import models
from gnp.loop import Run, close_distributed, score_heads_in_fp32
from gnp.recipes import get_recipe

TIED = 10.0  # every logit rounds to this in bf16 (8 significant bits: 10.0 + 1/64 does too)


def tied_head(name, num_classes, image_size, **options):
    """Logits equal to its bias whatever the image: the last class ahead by 1/64, a tie rounded to bf16."""
    head = nn.Linear(3, num_classes)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(TIED)
        head.bias[-1] += 1 / 64
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


@pytest.mark.parametrize("compile", [False, True])
def test_a_near_tie_in_bf16_logits_is_scored_as_in_fp32(digits_root, tmp_path, monkeypatch, compile):
    monkeypatch.setattr("gnp.loop.build_model", tied_head)
    run = Run(get_recipe("digits", out=str(tmp_path), amp="bf16", loader_workers=0, threads=1, compile=compile))
    images, x = torch.zeros(8, 3, 32, 32, dtype=torch.uint8), torch.zeros(8, 3, 32, 32)
    targets = torch.full((8,), run.num_classes - 1)
    with run.autocast():  # the precondition: in training mode the head's bf16 output ties
        assert run.model(x).dtype == torch.bfloat16 and (run.model(x) == TIED).all()
    assert run.evaluate([(images, targets)]) == (0.0, 0.0, 8)  # fp32 ranks the last class first
    with run.autocast():
        assert run.model(x).dtype == torch.float32  # in eval mode, as evaluate() left it


class Compiled(nn.Module):
    """A stand-in for torch.compile's wrapper: records which module it wraps and each call's mode."""

    def __init__(self, module):
        super().__init__()
        self.wrapped = module
        self.calls = []

    def forward(self, *args):
        self.calls.append("train" if self.wrapped.training else "eval")
        return self.wrapped(*args)


def compile_order_worker(rank, init_file, out, queue):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    compiled = []
    torch.compile = lambda module, **options: compiled.append(Compiled(module)) or compiled[-1]
    cfg = get_recipe("digits", out=out, compile=True, variant="gnp", alpha=0.5, epochs=1, batch_size=64,
                     loader_workers=0, threads=1)
    run = Run(cfg)
    run.run_epoch()
    queue.put((rank, dict(
        wrapped=[type(c.wrapped).__name__ for c in compiled],
        forward_wraps_ddp=run.forward is compiled[0] and compiled[0].wrapped is run.ddp,
        evaluator_wraps_model=run.evaluator is compiled[1] and compiled[1].wrapped is run.model,
        calls=[sorted(set(c.calls)) for c in compiled],
        steps=len(compiled[0].calls), eval_batches=len(compiled[1].calls),
        plain_ddp=isinstance(run.ddp, DistributedDataParallel),
    )))
    dist.barrier()
    del run
    close_distributed()


@pytest.mark.ddp
def test_ddp_is_wrapped_before_compile_and_evaluation_is_compiled(digits_root, tmp_path):
    """torch.compile gets the DDP module (dynamo then splits the graph at DDP's buckets, overlapping each
    all-reduce with the rest of the backward), and evaluation goes through a compiled plain module."""
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(compile_order_worker, args=(str(tmp_path / "init"), str(tmp_path / "run"), queue), nprocs=2)
    got = dict(queue.get() for _ in range(2))
    for rank in (0, 1):
        seen = got[rank]
        assert seen["wrapped"] == ["DistributedDataParallel", "Sequential"], seen
        assert seen["forward_wraps_ddp"] and seen["evaluator_wraps_model"] and seen["plain_ddp"], seen
        assert seen["calls"] == [["train"], ["eval"]], seen
        # 719 training images a rank in steps of 32, two passes each (GNP); 180 test images in batches of 32
        assert seen["steps"] == 2 * (719 // 32) and seen["eval_batches"] == math.ceil(180 / 32), seen


@pytest.mark.parametrize("name", models.REGISTRY)
def test_every_model_scores_its_output_head_in_fp32(name):
    """Exactly one module is scored in float32, and it is the one that gives the model's output (on the meta
    device: no weights are made)."""
    with torch.device("meta"):
        model = models.build_model(name, 10, 32).eval()
    score_heads_in_fp32(model, 10)
    heads = [module for module in model.modules() if module._forward_hooks]
    assert len(heads) == 1, heads
    outputs = []
    heads[0].register_forward_hook(lambda module, inputs, output: outputs.append(output))
    assert model(torch.empty(2, 3, 32, 32, device="meta")) is outputs[0]
