"""The GPU run in steps that each bring something back: one command per step, each under its own time cap.

    PYTHONPATH=. timeout -k 15 240 python3 bench/gpu_steps.py A --out "$OUT"   # then B, C, D likewise

A  preflight (driver, CUDA, NCCL, torch/torchvision/Triton/timm, a C compiler for torch.compile), then the
   grid's eager step (bench/grid_step.py) per scheme: ImageNet ResNet-50 at its 128 per GPU, WRN-28-10 and
   ViT-S at CIFAR's 64, ResNet-50 at 256                                       -> A.jsonl, A.log
B  the GPU tier, tests/test_gpu.py, with -v, --durations and junit             -> B.log, B.xml
C  the compiled step (ResNet-50 at 128), then bench/pipeline.py: the loader alone and the whole loop at
   the recipe's batch and 1,000-class head                                     -> C.jsonl, C.log
D  bench/packing.py: WRN-28-10 trials 1, 2 and 4 to a GPU                      -> D.jsonl, D.log

Every figure is a line of <step>.jsonl the moment it exists (flushed and synced), each line naming its
step and kind; the log is everything printed. A step plans to end --cap seconds after it starts, less a
margin: it starts nothing it cannot finish by then, and a scheme's steps stop at that time (its line then says
`cut`). SIGTERM (what `timeout` sends) or SIGINT ends it at once with what it has, a `cut` line last, exit 124.
The device is GNP_GPU_TIER_DEVICE (default cuda): `cpu` checks the steps on a machine without a GPU (gloo for
NCCL). The ViTs need timm: without it, the wheel in .whl/ (make gpu-wheels) is installed to /tmp/gnp-timm.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CAPS = {"A": 240, "B": 240, "C": 240, "D": 180}  # seconds, each step's own command
MARGIN_S = 15  # what a step keeps, of its cap, to end cleanly
POINTS = {
    "A": "imagenet-resnet50,cifar10-wrn28-10,cifar10-vit-s-basic,imagenet-resnet50@256",
    "C": "imagenet-resnet50",
}
TIMM_TARGET = "/tmp/gnp-timm"


class Cut(Exception):
    """A signal (timeout's SIGTERM, Ctrl-C) ends the step: what it has is kept."""


def on_signal(signum, frame):
    raise Cut(signal.Signals(signum).name)


class Record:
    """One JSON line per figure, on disk before the next is measured: <step>.jsonl, or for B (whose figures are
    the junit file) its log."""

    def __init__(self, path: Path, step: str):
        self.step, self.start = step, time.perf_counter()
        self.file = open(path, "a")  # noqa: SIM115 (open for the step's life)

    def __call__(self, kind: str, **fields) -> dict:
        line = dict(step=self.step, kind=kind, t_s=round(time.perf_counter() - self.start, 2), **fields)
        self.file.write(json.dumps(line, default=str) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        return line


class Tee:
    """stdout or stderr, copied into the step's log as it is written."""

    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, text):
        self.stream.write(text)
        self.log.write(text)
        self.log.flush()

    def flush(self):
        self.stream.flush()
        self.log.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def ensure_timm() -> str:
    """Make timm importable (from .whl/ into /tmp/gnp-timm if the Python lacks it); what was found."""
    if TIMM_TARGET not in sys.path and Path(TIMM_TARGET, "timm").is_dir():
        sys.path.append(TIMM_TARGET)
    try:
        import timm
    except ImportError:
        wheels = sorted(Path(".whl").glob("timm-*.whl"))
        if not wheels:
            return "missing (no .whl/timm-*.whl: make gpu-wheels, and carry .whl/)"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
                        TIMM_TARGET, str(wheels[-1])], check=False)
        sys.path.append(TIMM_TARGET)
        try:
            import timm
        except ImportError:
            return f"missing (installing {wheels[-1]} failed)"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), TIMM_TARGET]))
    return f"{timm.__version__} from {Path(timm.__file__).parent}"


def command(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=20)
        return (done.stdout or done.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unavailable ({err})"


def preflight(device_type: str, timm: str) -> dict:
    """What the machine is and has: enough to tell a failed step's cause from the first line."""
    import torch
    import torchvision

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    compiler = shutil.which("cc") or shutil.which("gcc")
    cuda = torch.cuda.is_available()
    found = dict(
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), host=platform.node(),
        python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__,
        triton=triton_version, timm=timm, cuda_runtime=torch.version.cuda, cuda_available=cuda,
        device_type=device_type, cpus=len(os.sched_getaffinity(0)),
        c_compiler=compiler and f"{compiler}: {command([compiler, '--version']).splitlines()[0]}",
        nvidia_smi=command(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]),
    )
    if cuda:
        props = torch.cuda.get_device_properties(0)
        found.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30,
                     capability=f"{props.major}.{props.minor}", nccl=".".join(map(str, torch.cuda.nccl.version())),
                     bf16=torch.cuda.is_bf16_supported())
    return found


def parse_points(text: str) -> list[tuple[str, int | None]]:
    """'recipe[@batch],...' (no batch: the recipe's per-GPU one)."""
    points = []
    for item in filter(None, text.split(",")):
        recipe, _, batch = item.partition("@")
        points.append((recipe, int(batch) if batch else None))
    return points


def step_points(args, record, device, deadline: float, compile: bool) -> None:
    """Each point's schemes in turn through the grid's step under DDP on a one-rank group; a line per scheme."""
    from grid_step import SCHEMES, one_rank_group, point_config, time_scheme

    with tempfile.TemporaryDirectory() as tmp, one_rank_group(device, f"{tmp}/init") as backend:
        for recipe, batch in parse_points(args.points):
            standard = None
            for scheme, changes in SCHEMES.items():
                cfg = point_config(recipe, batch, device, compile=compile, **changes)
                where = dict(recipe=recipe, model=cfg.model, batch=cfg.batch_size, image_size=cfg.image_size,
                             scheme=scheme, device_type=device.type, backend=backend)
                if time.perf_counter() >= deadline:
                    record("skipped", reason="cap", **where)
                    continue
                record("start", **where)
                lines = []

                def report(result, where=where, standard=standard, lines=lines):
                    lines.append(record("step", **where, **result, ratio_to_standard=ratio(result, standard)))

                time_scheme(cfg, device, ddp=True, warmup=args.warmup, steps=args.steps, chunk=args.chunk,
                            deadline=deadline, report=report)
                line = lines[0]
                standard = standard or line.get("step_s")
                print(f"{recipe} batch {cfg.batch_size} {scheme:14s} {'compiled ' if compile else ''}"
                      + (f"{line['step_s'] * 1e3:8.1f} ms/step, {line['img_s']:7.0f} img/s, "
                         f"{line['ratio_to_standard'] or 1:.3f}x standard, "
                         f"{line['allreduces_per_step']:.1f} all-reduces/step" if "step_s" in line else "no step timed")
                      + (f", peak {line['peak_memory_gib']:.2f} GiB" if "peak_memory_gib" in line else "")
                      + (f" (cut: {line['cut']})" if line["cut"] else ""), flush=True)


def ratio(result: dict, standard: float | None) -> float | None:
    return result["step_s"] / standard if standard and "step_s" in result else None


def step_a(args, record, device, deadline):
    step_points(args, record, device, deadline, compile=False)


def step_b(args, record, device, deadline):
    """pytest in a child process; at the deadline (or a signal) it gets SIGINT, which still writes the junit
    file and prints the running test's traceback, then SIGKILL if it has not ended 10 s later."""
    junit = Path(args.out) / "B.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", args.tests, "-v", "-p", "no:cacheprovider",
           "--durations=0", f"--junitxml={junit}", *args.pytest_args]
    print("$ " + " ".join(cmd), flush=True)
    sys.stdout.flush()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
        filter(None, [".", os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(cmd, stdout=sys.stdout.log, stderr=subprocess.STDOUT, env=env)
    try:
        proc.wait(timeout=max(1.0, deadline - time.perf_counter()))
    except (subprocess.TimeoutExpired, Cut) as err:
        print(f"\n== B: {'the cap' if isinstance(err, subprocess.TimeoutExpired) else err}: SIGINT to pytest",
              flush=True)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if isinstance(err, Cut):
            raise
        raise Cut("cap") from None
    finally:
        record("tests", returncode=proc.returncode, junit=str(junit), junit_written=junit.is_file())
    if proc.returncode:
        raise SystemExit(proc.returncode)


def step_c(args, record, device, deadline):
    """The compiled step within --compile-share of the cap, then the loader and the whole loop."""
    compile_deadline = min(deadline, time.perf_counter() + args.compile_share * args.cap)
    step_points(args, record, device, compile_deadline, compile=True)
    import pipeline

    options = pipeline.parser().parse_args([])
    workers = args.loader_workers or max(2, len(os.sched_getaffinity(0)) - 4)
    options.__dict__.update(workers=f"1,{workers}", train=True, train_workers=workers, device=device.type,
                            classes=args.pipeline_classes, model=args.pipeline_model, size=args.pipeline_size,
                            batch=args.pipeline_batch, steps=args.pipeline_steps, warmup=args.pipeline_warmup,
                            waves=args.pipeline_waves, decode=args.pipeline_decode, rates=args.rates or args.out)
    record("pipeline_setting", **pipeline.setting(options))
    with tempfile.TemporaryDirectory(prefix="pipeline-") as tmp:
        figures = pipeline.measure(options, Path(tmp))
        for kind, figure in figures:
            record(kind, **figure)
            if time.perf_counter() >= deadline:
                record("skipped", reason="cap", what="the rest of bench/pipeline.py")
                figures.close()
                break


def step_d(args, record, device, deadline):
    """Packed trials, 1, 2 and 4 to the device, while the cap leaves time for the next point."""
    import packing

    options = packing.parser().parse_args([])
    options.__dict__.update(recipe=args.packing_recipe, batch=args.packing_batch, device=device.type,
                            steps=args.packing_steps)
    last_s = 0.0
    for n in (int(t) for t in args.trials.split(",")):
        if time.perf_counter() + last_s * 1.5 >= deadline:
            record("skipped", reason="cap", trials=n)
            continue
        result = packing.measure(options, n)
        last_s = result["wall_s"]
        record("packing", device_type=device.type, **result)
        print(f"{n} trial(s) of {args.packing_recipe}: {result['summed_img_s']:.0f} img/s summed, per trial "
              + ", ".join(f"{r:.0f}" for r in result["per_trial_img_s"]), flush=True)


STEPS = {"A": step_a, "B": step_b, "C": step_c, "D": step_d}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=STEPS)
    p.add_argument("--out", default=os.environ.get("OUT") or f"bench/results/gpu-{datetime.date.today()}",
                   help="the output folder (default: $OUT, else bench/results/gpu-<date>)")
    p.add_argument("--cap", type=float, help=f"seconds the step may take (default: {CAPS})")
    p.add_argument("--points", help=f"A, C: recipe[@per-GPU batch],... (default A: {POINTS['A']}; C: {POINTS['C']})")
    p.add_argument("--warmup", type=int, default=4, help="A, C: untimed steps per scheme")
    p.add_argument("--steps", type=int, default=16, help="A, C: timed steps per scheme")
    p.add_argument("--chunk", type=int, default=4, help="A, C: steps per epoch (the amortized scheme's period)")
    p.add_argument("--tests", default="tests/test_gpu.py", help="B: the test file")
    p.add_argument("--compile-share", type=float, default=0.5, help="C: the compiled step's share of the cap")
    p.add_argument("--loader-workers", type=int, help="C: loader processes (default: CPUs - 4)")
    p.add_argument("--pipeline-model", default="ResNet50")
    p.add_argument("--pipeline-size", type=int, default=224)
    p.add_argument("--pipeline-classes", type=int, default=1000)
    p.add_argument("--pipeline-batch", type=int, help="C: the loop's batch (default: the recipe's per GPU)")
    p.add_argument("--pipeline-steps", type=int, default=30)
    p.add_argument("--pipeline-warmup", type=int, default=5)
    p.add_argument("--pipeline-waves", type=int, default=10)
    p.add_argument("--pipeline-decode", default="loader,device")
    p.add_argument("--rates", help="C: folder with A.jsonl for the GPU rates (default: --out)")
    p.add_argument("--packing-recipe", default="cifar10-wrn28-10")
    p.add_argument("--packing-batch", type=int, default=256)
    p.add_argument("--packing-steps", type=int, default=15)
    p.add_argument("--trials", default="1,2,4", help="D: trials per device")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser().parse_args(argv[:split])
    args.pytest_args = argv[split + 1:]  # B: after --, for pytest
    args.cap = args.cap or CAPS[args.step]
    args.points = POINTS.get(args.step, "") if args.points is None else args.points
    start = time.perf_counter()
    deadline = start + args.cap - MARGIN_S
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / f"{args.step}.log", "a")  # noqa: SIM115 (the step's log, open for its life)
    sys.stdout, sys.stderr = Tee(sys.__stdout__, log), Tee(sys.__stderr__, log)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    record = Record(out / (f"{args.step}.log" if args.step == "B" else f"{args.step}.jsonl"), args.step)
    device_type = os.environ.get("GNP_GPU_TIER_DEVICE", "cuda")
    status = 0
    try:
        timm = ensure_timm()
        import torch

        found = record("preflight", cap_s=args.cap, **(preflight(device_type, timm) if args.step == "A" else dict(
            device_type=device_type, cuda_available=torch.cuda.is_available(), timm=timm)))
        print("preflight: " + ", ".join(f"{k} {v}" for k, v in found.items() if k not in ("step", "kind")), flush=True)
        if device_type == "cuda" and not torch.cuda.is_available():
            print("no CUDA GPU visible (GNP_GPU_TIER_DEVICE=cpu checks the steps on a CPU)", flush=True)
            return 2
        device = torch.device(device_type)
        if device.type == "cpu":
            torch.set_num_threads(max(1, min(4, len(os.sched_getaffinity(0)))))
        STEPS[args.step](args, record, device, deadline)
    except Cut as cut:
        record("cut", reason=str(cut))
        print(f"== {args.step} cut short ({cut}) after {time.perf_counter() - start:.0f} s", flush=True)
        status = 124
    except Exception as err:  # the step's line says what failed, for the window's one look at it
        record("failed", error=f"{type(err).__name__}: {err}")
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        print(f"== {args.step}: {time.perf_counter() - start:.0f} s of a {args.cap:.0f} s cap; results in {out}",
              flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
