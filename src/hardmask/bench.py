"""``python -m hardmask.bench``: throughput, FLOPs and memory of the models and of the training loader.

Builds the configured two-stage model and the single-stage baseline with random weights (never downloaded),
feeds fixed synthetic batches and forces stage 2's patch mask to a controlled foreground fraction
(``--fg-fraction``; per image the kept count is drawn uniformly within +-``--fg-spread`` of it, at random
positions), so that the packed and dense stage-2 paths are timed on the same work (one model, same weights).

Measurements (one JSON line each on stdout, then one line of packed/dense ratios):

- ``train_step``: forward + the variant's full criterion (with the equivariance pass when
  ``loss.equivariance > 0``) + backward + gradient clipping + optimiser step; two-stage (packed, dense) and
  baseline;
- ``stage2_train``: stage 2 alone, forward + cross-entropy + backward (packed, dense);
- ``eval``: one forward pass under ``torch.inference_mode``; two-stage (packed, dense) and baseline;
- ``train_loader``: samples/s of the training DataLoader (real dataset, training transforms) per worker count,
  or a line saying why it was skipped (no dataset at ``cfg.data_root``);
- ``executors`` (only when asked for: it trains): per executor of ``--executors``, the round trip of an empty
  job and one real training job of ``--variant`` submitted through it (:mod:`hardmask.cluster.timing`).

The model measurements of one kind run in turn (packed, dense, baseline, packed, ...) so that a noisy machine
slows them alike; medians are reported, wall-clock (``ms_per_step``) and CPU time of this process
(``cpu_ms_per_step``, all its threads). After the warm-up, one extra untimed step per case counts FLOPs
(``torch.utils.flop_counter.FlopCounterMode``; backward included for training steps; padded tokens count) and
measures memory: ``torch.cuda.max_memory_allocated`` on a GPU (weights, optimiser state and activations), on a
CPU the peak of what the step allocated and had not freed yet, from the profiler's allocator events (the
step's working memory; weights and optimiser state allocated before it are excluded). ``memory_kind`` says
which.

The training step is :class:`hardmask.training.trainer.Trainer`'s, the one the training loop runs.

The config is ``--params`` (default ``params.yaml``), or the Hydra composition of ``conf/`` with ``--compose``
overrides; ``--set KEY=VALUE`` applies last. ``--paper`` composes the paper setting (``dataset=waterbirds
recipe=paper``: ViT-B/14 reg4 DINOv2 at 518 px, stage-1 backbone frozen) with K = 8, batch 16 and bf16
autocast on a GPU; on a CPU use it as a smoke check only, e.g.
``--paper --steps 1 --warmup 0 --batch 2 --eval-batch 2 --only train_step``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils import flop_counter

from hardmask.config import Config, ConfigError, apply_overrides, compose, config_from_dict, read_yaml
from hardmask.models import build_model
from hardmask.runtime import autocast, autocast_dtype, resolve_device
from hardmask.training.trainer import Trainer

MEASUREMENTS = ("train_step", "stage2_train", "eval", "train_loader")
OPT_IN = ("executors",)  # not in the default --only: it trains a model per executor
PAPER_GROUPS = ("dataset=waterbirds", "recipe=paper")  # ViT-B/14 reg4 DINOv2 at 518 px, stage-1 frozen
PAPER_OVERRIDES = (
    "model.num_parts=8",
    "optim.amp=bf16",
    "model.freeze_backbone=true",
    "data.loader.batch_size=16",
    "data.loader.eval_batch_size=64",
)
# always last: the bench times random weights and never touches the network
RANDOM_WEIGHTS = ("model.backbone.pretrained=false", "model.backbone.checkpoint_path=null")
CUDA_PEAK_TFLOPS = 989.0  # dense bf16 peak of an H100/H200 SXM (shared/perf-reference.md)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hardmask.bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--params", default="params.yaml", help="params.yaml to read the model/loss/optim config from"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)"
    )
    parser.add_argument(
        "--compose",
        action="append",
        default=[],
        metavar="OVERRIDE",
        help="compose conf/ with this Hydra override instead of reading --params (repeatable)",
    )
    parser.add_argument(
        "--paper",
        action="store_true",
        help="the paper setting: " + " ".join(PAPER_GROUPS) + ", then " + ", ".join(PAPER_OVERRIDES),
    )
    parser.add_argument("--variant", default="two_stage_hard", choices=("two_stage_hard", "two_stage_soft"))
    parser.add_argument(
        "--only",
        default=",".join(MEASUREMENTS),
        help=f"comma-separated subset of {', '.join(MEASUREMENTS + OPT_IN)} (default: all but {OPT_IN[0]})",
    )
    parser.add_argument(
        "--fg-fraction", type=float, default=0.3, help="mean share of patch tokens kept by stage 2"
    )
    parser.add_argument(
        "--fg-spread", type=float, default=0.5, help="relative spread of the per-image kept share"
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each measurement")
    parser.add_argument(
        "--batch", type=int, default=None, help="training batch (default data.loader.batch_size)"
    )
    parser.add_argument(
        "--eval-batch", type=int, default=None, help="evaluation batch (default data.loader.eval_batch_size)"
    )
    parser.add_argument("--num-classes", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help=f"peak TFLOP/s for the utilisation figure (default {CUDA_PEAK_TFLOPS:g} on CUDA, none on CPU)",
    )
    parser.add_argument(
        "--loader-batches",
        type=int,
        default=10,
        help="timed batches per loader measurement (one epoch at most)",
    )
    parser.add_argument(
        "--loader-workers", default="0,2", help="comma-separated DataLoader worker counts to measure"
    )
    parser.add_argument("--executors", default="local", help="executors: comma-separated local, slurm, debug")
    parser.add_argument("--train-epochs", type=int, default=1, help="epochs of the executors' training job")
    parser.add_argument("--round-trips", type=int, default=5, help="empty jobs timed per executor")
    parser.add_argument(
        "--workdir", default="runs/bench", help="executors: where the timed jobs write (a fresh folder each)"
    )
    args = parser.parse_args(argv)
    if not 0.0 <= args.fg_fraction <= 1.0:
        parser.error(f"--fg-fraction must be in [0, 1], got {args.fg_fraction}")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    args.only = tuple(name.strip() for name in args.only.split(",") if name.strip())
    unknown = sorted(set(args.only) - set(MEASUREMENTS + OPT_IN))
    if unknown:
        known = ", ".join(MEASUREMENTS + OPT_IN)
        parser.error(f"--only: unknown measurements {unknown}; choose from {known}")
    args.executors = tuple(name.strip() for name in args.executors.split(",") if name.strip())
    bad = sorted(set(args.executors) - {"local", "slurm", "debug"})
    if bad:
        parser.error(f"--executors: unknown executors {bad}; choose from local, slurm, debug")
    try:
        args.loader_workers = tuple(int(n) for n in args.loader_workers.split(","))
    except ValueError:
        parser.error(f"--loader-workers: expected comma-separated integers, got {args.loader_workers!r}")
    return args


def bench_overrides(args: argparse.Namespace) -> list[str]:
    """``KEY=VALUE`` overrides in order: ``--paper``'s, ``--set``, then random weights (always)."""
    return [*(PAPER_OVERRIDES if args.paper else ()), *args.set, *RANDOM_WEIGHTS]


def bench_config(args: argparse.Namespace) -> Config:
    """``--params`` (or ``conf/`` composed with ``--paper``'s groups and ``--compose``), then the
    overrides."""
    groups = [*(PAPER_GROUPS if args.paper else ()), *args.compose]
    data = compose(groups) if groups else read_yaml(args.params)
    source = f"conf/ + {groups}" if groups else args.params
    return config_from_dict(apply_overrides(data, bench_overrides(args)), source=f"{source} (bench)")


def forced_patch_mask(
    batch: int, num_tokens: int, fraction: float, spread: float, generator: torch.Generator
) -> Tensor:
    """[batch, num_tokens] bool; per image ``round(fraction * U(1 -+ spread) * num_tokens)`` tokens kept."""
    shares = fraction * (1 + spread * (2 * torch.rand(batch, generator=generator) - 1))
    counts = (shares.clamp(0, 1) * num_tokens).round().long()  # [B]
    ranks = (
        torch.rand(batch, num_tokens, generator=generator).argsort(dim=1).argsort(dim=1)
    )  # random permutation
    return ranks < counts[:, None]


# --------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timings:
    """Per-step milliseconds of one callable: wall clock and CPU time of this process (all threads)."""

    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)


def time_interleaved(
    steps: list[Callable[[], None]], rounds: int, warmup: int, device: torch.device
) -> list[Timings]:
    """Milliseconds of each step callable, run in turn (ABCABC...) so that machine noise hits all alike.

    The first ``warmup`` rounds are not timed. Returns one :class:`Timings` of ``rounds`` steps per callable.
    """
    timings = [Timings() for _ in steps]
    for round_index in range(warmup + rounds):
        for step, times in zip(steps, timings):
            _sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            _sync(device)
            if round_index >= warmup:
                times.wall_ms.append((time.perf_counter() - wall) * 1e3)
                times.cpu_ms.append((time.process_time() - cpu) * 1e3)
    return timings


# --------------------------------------------------------------------------------------- FLOPs, memory
def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _cpu_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode knows the CUDA attention kernels only; the CPU flash kernel does the same matrix products
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
}


def _allocation_peak_bytes(prof: torch.profiler.profile) -> int:
    """Peak of (bytes allocated - bytes freed) over the profiler's CPU allocator events, in time order."""
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Yields a dict that holds ``peak_memory_mib`` and ``memory_kind`` once the block has run.

    CUDA: ``max_memory_allocated`` during the block (everything resident on the GPU). CPU: the peak of the
    bytes the block allocated and had not yet freed, from the profiler's allocator events (tensors alive
    before the block, such as the weights, are not counted).
    """
    result: dict = {}
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        _sync(device)
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["memory_kind"] = "cuda_max_memory_allocated"
        return
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        yield result
    result["peak_memory_mib"] = _allocation_peak_bytes(prof) / 2**20
    result["memory_kind"] = "cpu_peak_allocated_during_step"


@dataclass(frozen=True)
class Probe:
    flops: int  # of one step
    memory: dict  # peak_memory_mib, memory_kind


def probe_step(step: Callable[[], None], device: torch.device) -> Probe:
    """One untimed step under the FLOP counter and the memory probe."""
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
    with peak_memory(device) as memory, counter:
        step()
    return Probe(flops=counter.get_total_flops(), memory=memory)


# -------------------------------------------------------------------------------------------- models
class BenchModel:
    """One configured model (random weights), its :class:`Trainer`, and fixed synthetic batches."""

    def __init__(self, cfg: Config, variant: str, args: argparse.Namespace, device: torch.device) -> None:
        torch.manual_seed(0)
        self.cfg, self.variant, self.device = cfg, variant, device
        image_size = cfg.data.image_size
        self.model = build_model(variant, cfg.model, num_classes=args.num_classes, image_size=image_size)
        self.model.to(device)
        self.trainer = Trainer(cfg, variant, self.model, device, batches_per_epoch=100)
        self.batch = args.batch or cfg.data.loader.batch_size
        self.eval_batch = args.eval_batch or cfg.data.loader.eval_batch_size
        self.two_stage = hasattr(self.model, "stage2")
        generator = torch.Generator().manual_seed(0)
        num_tokens = self.model.grid_size[0] * self.model.grid_size[1] if self.two_stage else 0

        def inputs(size: int) -> dict[str, Tensor]:
            batch = {
                "image": torch.randn(size, 3, image_size, image_size, generator=generator).to(device),
                "label": torch.randint(0, args.num_classes, (size,), generator=generator).to(device),
            }
            if self.two_stage:
                mask = forced_patch_mask(size, num_tokens, args.fg_fraction, args.fg_spread, generator)
                batch["patch_mask"] = mask.to(device)
            return batch

        self.train_inputs = inputs(self.batch)
        self.eval_inputs = inputs(self.eval_batch)

    def _use(self, impl: str | None) -> None:
        if impl is not None:
            self.model.stage2.impl = impl

    def train_step(self, impl: str | None = None) -> None:
        """The training loop's step (:meth:`Trainer.step`): forward, the variant's full criterion
        (equivariance pass included), backward, clipping, optimiser and schedule step."""
        self._use(impl)
        self.model.train()
        self.trainer.step(self.train_inputs)

    def stage2_train_step(self, impl: str | None = None) -> None:
        """Stage 2 alone through the forced mask: forward, cross-entropy, backward (no optimiser step)."""
        self._use(impl)
        self.model.train()
        images, labels, mask = (self.train_inputs[k] for k in ("image", "label", "patch_mask"))
        with autocast(self.cfg.optim.amp, self.device):
            if self.model.soft_masks:
                logits = self.model.stage2(images, soft_mask=mask.float())
            else:
                logits = self.model.stage2(images, mask)
            loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        self.model.zero_grad(set_to_none=True)

    @torch.inference_mode()
    def eval_step(self, impl: str | None = None) -> None:
        self._use(impl)
        self.model.eval()
        batch = self.eval_inputs
        kwargs = {"patch_mask": batch["patch_mask"]} if "patch_mask" in batch else {}
        with autocast(self.cfg.optim.amp, self.device):
            self.model(batch["image"], **kwargs)


@dataclass(frozen=True)
class Case:
    """One timed callable: a measurement of one model on one stage-2 path."""

    measurement: str
    bench: BenchModel
    impl: str | None

    @property
    def batch(self) -> int:
        return self.bench.eval_batch if self.measurement == "eval" else self.bench.batch

    def step(self) -> Callable[[], None]:
        method = {
            "train_step": self.bench.train_step,
            "stage2_train": self.bench.stage2_train_step,
            "eval": self.bench.eval_step,
        }[self.measurement]
        return functools.partial(method, self.impl)


def _significant(value: float, digits: int = 6) -> float:
    return float(f"{value:.{digits}g}")


def case_record(case: Case, times: Timings, probe: Probe, context: dict) -> dict:
    median_ms = statistics.median(times.wall_ms)
    flops_per_image = probe.flops / case.batch
    tflops = probe.flops / (median_ms / 1e3) / 1e12
    peak = context["peak_tflops"]
    return {
        "measurement": case.measurement,
        "model": case.bench.variant,
        "stage2_impl": case.impl,
        "batch": case.batch,
        "steps": len(times.wall_ms),
        "ms_per_step": round(median_ms, 3),
        "ms_per_step_mean": round(statistics.fmean(times.wall_ms), 3),
        "cpu_ms_per_step": round(statistics.median(times.cpu_ms), 3),
        "images_per_s": _significant(case.batch / (median_ms / 1e3), 4),
        "gflop_per_image": _significant(flops_per_image / 1e9),
        "tflops": _significant(tflops),
        "utilisation": _significant(tflops / peak) if peak else None,
        "peak_tflops": peak,
        "peak_memory_mib": None
        if probe.memory["peak_memory_mib"] is None
        else round(probe.memory["peak_memory_mib"], 1),
        "memory_kind": probe.memory["memory_kind"],
        "fg_fraction": context["fg_fraction"] if case.bench.two_stage else None,
        **{k: v for k, v in context.items() if k not in ("peak_tflops", "fg_fraction")},
    }


def measure_cases(
    cases: list[Case], args: argparse.Namespace, device: torch.device, context: dict
) -> list[dict]:
    """Warm-up (interleaved), one FLOP/memory probe per case, then the timed interleaved rounds."""
    steps = [case.step() for case in cases]
    time_interleaved(steps, rounds=0, warmup=args.warmup, device=device)
    probes = [probe_step(step, device) for step in steps]
    timings = time_interleaved(steps, rounds=args.steps, warmup=0, device=device)
    return [case_record(case, times, probe, context) for case, times, probe in zip(cases, timings, probes)]


# -------------------------------------------------------------------------------------------- loader
def loader_records(cfg: Config, batch: int, args: argparse.Namespace) -> list[dict]:
    """Samples/s of the training DataLoader (training transforms, as in training) per worker count."""
    from hardmask.data import build_dataset, make_loader
    from hardmask.data.common import DataError
    from hardmask.training.sampler import ResumableSampler, SeededSamples

    base = {"measurement": "train_loader", "dataset": cfg.data.dataset, "image_size": cfg.data.image_size}
    try:
        dataset = build_dataset(cfg, "train", train=True)
    except DataError as exc:
        return [{**base, "skipped": f"no training data at {cfg.data_root}: {exc}"}]
    records = []
    for workers in args.loader_workers:
        sampler = ResumableSampler(len(dataset), batch, seed=0)
        loader = make_loader(
            SeededSamples(dataset, seed=0), batch, num_workers=workers, pin_memory=False, sampler=sampler
        )
        # one epoch at most; its first batch (worker start-up) is untimed
        wanted = min(args.loader_batches, sampler.batches_per_epoch - 1)
        start = time.perf_counter()
        batches = iter(loader)
        next(batches)
        first = time.perf_counter()
        for _ in range(wanted):
            next(batches)
        elapsed = time.perf_counter() - first
        del batches  # shuts the workers down
        records.append(
            {
                **base,
                "workers": workers,
                "batch": batch,
                "batches": wanted,
                "first_batch_s": round(first - start, 3),
                "samples_per_s": round(wanted * batch / elapsed, 1) if wanted else None,
            }
        )
    return records


# ---------------------------------------------------------------------------------------------- main
def _emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = bench_config(args)
        device = resolve_device(args.device)
    except (ConfigError, RuntimeError) as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    peak = (
        args.peak_tflops
        if args.peak_tflops is not None
        else (CUDA_PEAK_TFLOPS if device.type == "cuda" else None)
    )
    context = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "dtype": str(autocast_dtype(cfg.optim.amp, device) or torch.float32).removeprefix("torch."),
        "image_size": cfg.data.image_size,
        "backbone": cfg.model.backbone.name,
        "num_parts": cfg.model.num_parts,
        "peak_tflops": peak,
        "fg_fraction": args.fg_fraction,
    }
    model_measurements = [m for m in MEASUREMENTS if m != "train_loader" and m in args.only]
    two_stage_records: dict[tuple[str, str | None], dict] = {}  # (measurement, stage-2 path) -> record
    if model_measurements:
        two_stage = BenchModel(cfg, args.variant, args, device)
        need_baseline = {"train_step", "eval"} & set(model_measurements)
        baseline = BenchModel(cfg, "baseline_vit", args, device) if need_baseline else None
        impls = ("packed", "dense") if args.variant == "two_stage_hard" else (None,)
        for measurement in model_measurements:
            cases = [Case(measurement, two_stage, impl) for impl in impls]
            if measurement != "stage2_train" and baseline is not None:
                cases.append(Case(measurement, baseline, None))
            for case, record in zip(cases, measure_cases(cases, args, device, context)):
                if case.bench is two_stage:
                    two_stage_records[measurement, case.impl] = record
                _emit(record)
    if "train_loader" in args.only:
        for record in loader_records(cfg, args.batch or cfg.data.loader.batch_size, args):
            _emit(record)
    if "executors" in args.only:
        from hardmask.cluster.timing import executor_record

        for executor in args.executors:
            record = executor_record(
                cfg, executor, args.variant, args.train_epochs, args.round_trips, Path(args.workdir)
            )
            _emit({**record, "device": str(device)})
    if args.variant == "two_stage_hard" and model_measurements:
        packed, dense = (
            {m: two_stage_records[m, impl] for m in model_measurements} for impl in ("packed", "dense")
        )
        ratios = {  # medians of the interleaved runs: wall clock and CPU time
            f"{m}_{name}_ratio": round(packed[m][key] / dense[m][key], 3)
            for m in model_measurements
            for name, key in (("ms", "ms_per_step"), ("cpu_ms", "cpu_ms_per_step"))
        }
        _emit(
            {
                "measurement": "packed_dense_ratio",
                "model": args.variant,
                "fg_fraction": args.fg_fraction,
                **ratios,
                "device": str(device),
                "threads": torch.get_num_threads(),
            }
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
