"""``python -m hardmask.bench``: training-step and evaluation throughput of the configured models.

Builds the configured two-stage model (random weights) and the single-stage baseline, feeds synthetic batches
and forces stage 2's patch mask to a controlled foreground fraction (``--fg-fraction``; per image the kept
count is drawn uniformly within +-``--fg-spread`` of it, at random positions), so that the packed and dense
stage-2 paths are timed on the same work (one model, same weights). A training step is forward + the variant's
full criterion (equivariance pass included) + backward + optimiser step. The measured steps run in turn
(packed, dense, baseline, packed, ...) so that a noisy machine slows them alike; medians are reported. One
JSON line per measurement on stdout, then one line with the packed/dense ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor

from hardmask.config import Config, load_config
from hardmask.losses import Criterion
from hardmask.models import build_model
from hardmask.training.optim import build_optimizer, build_param_groups


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hardmask.bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--params", default="params.yaml", help="params.yaml to read the model/loss/optim config from"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)"
    )
    parser.add_argument("--variant", default="two_stage_hard", choices=("two_stage_hard", "two_stage_soft"))
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
        "--eval-batch", type=int, default=None, help="evaluation batch (default: the training batch)"
    )
    parser.add_argument("--num-classes", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.fg_fraction <= 1.0:
        parser.error(f"--fg-fraction must be in [0, 1], got {args.fg_fraction}")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    steps: list[Callable[[], None]], rounds: int, warmup: int, device: torch.device
) -> list[list[float]]:
    """Milliseconds of each step callable, run in turn (ABCABC...) so that machine noise hits all alike.

    The first ``warmup`` rounds are not timed. Returns one list of ``rounds`` timings per callable.
    """
    timings: list[list[float]] = [[] for _ in steps]
    for round_index in range(warmup + rounds):
        for step, times in zip(steps, timings):
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            if round_index >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return timings


def _autocast(cfg: Config, device: torch.device) -> contextlib.AbstractContextManager:
    if device.type != "cuda" or cfg.optim.amp == "off":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16 if cfg.optim.amp == "fp16" else torch.bfloat16)


class BenchModel:
    """One configured model (random weights), its optimiser and criterion, and fixed synthetic batches."""

    def __init__(self, cfg: Config, variant: str, args: argparse.Namespace, device: torch.device) -> None:
        torch.manual_seed(0)
        self.cfg, self.variant, self.device = cfg, variant, device
        image_size = cfg.data.image_size
        self.model = build_model(variant, cfg.model, num_classes=args.num_classes, image_size=image_size)
        self.model.to(device)
        self.optimizer = build_optimizer(
            build_param_groups(self.model, variant, cfg, steps_per_epoch=100), cfg
        )
        self.criterion = Criterion(cfg.loss, variant)
        self.batch = args.batch or cfg.data.loader.batch_size
        self.eval_batch = args.eval_batch or self.batch
        self.two_stage = hasattr(self.model, "stage2")
        generator = torch.Generator().manual_seed(0)
        num_tokens = self.model.grid_size[0] * self.model.grid_size[1] if self.two_stage else 0

        def inputs(size: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
            images = torch.randn(size, 3, image_size, image_size, generator=generator).to(device)
            labels = torch.randint(0, args.num_classes, (size,), generator=generator).to(device)
            if not self.two_stage:
                return images, labels, {}
            mask = forced_patch_mask(size, num_tokens, args.fg_fraction, args.fg_spread, generator)
            return images, labels, {"patch_mask": mask.to(device)}

        self.train_inputs = inputs(self.batch)
        self.eval_inputs = inputs(self.eval_batch)

    def _use(self, impl: str | None) -> None:
        if impl is not None:
            self.model.stage2.impl = impl

    def train_step(self, impl: str | None = None) -> None:
        """Forward, the variant's full criterion (equivariance pass included), backward, optimiser step."""
        self._use(impl)
        self.model.train()
        images, labels, kwargs = self.train_inputs
        with _autocast(self.cfg, self.device):
            out = self.model(images, **kwargs)
            losses = self.criterion(self.model, images, labels, out)
        losses.total.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def eval_step(self, impl: str | None = None) -> None:
        self._use(impl)
        self.model.eval()
        images, _, kwargs = self.eval_inputs
        with _autocast(self.cfg, self.device):
            self.model(images, **kwargs)


def _record(measurement: str, bench: BenchModel, impl: str | None, times: list[float], args) -> dict:
    batch = bench.batch if measurement == "train_step" else bench.eval_batch
    median = statistics.median(times)
    return {
        "measurement": measurement,
        "model": bench.variant,
        "stage2_impl": impl,
        "batch": batch,
        "steps": len(times),
        "ms_per_step": round(median, 3),
        "ms_per_step_mean": round(statistics.fmean(times), 3),
        "images_per_s": round(batch / (median / 1e3), 1),
        "device": str(bench.device),
        "image_size": bench.cfg.data.image_size,
        "fg_fraction": args.fg_fraction if bench.two_stage else None,
    }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return device


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.params, overrides=args.set)
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    two_stage = BenchModel(cfg, args.variant, args, device)
    baseline = BenchModel(cfg, "baseline_vit", args, device)
    # (model, stage-2 path); the packed and dense paths run on one model, so they time identical weights
    impls = ("packed", "dense") if args.variant == "two_stage_hard" else (None,)
    cases = [(two_stage, impl) for impl in impls] + [(baseline, None)]
    medians: dict[tuple[str, str | None], float] = {}
    for measurement in ("train_step", "eval"):
        steps = [
            functools.partial(bench.train_step if measurement == "train_step" else bench.eval_step, impl)
            for bench, impl in cases
        ]
        timings = time_interleaved(steps, args.steps, args.warmup, device)
        for (bench, impl), times in zip(cases, timings):
            record = _record(measurement, bench, impl, times, args)
            medians[measurement, impl if bench is two_stage else "baseline"] = record["ms_per_step"]
            print(json.dumps(record), flush=True)
    if args.variant == "two_stage_hard":
        ratio = {
            "measurement": "packed_dense_ratio",
            "model": args.variant,
            "fg_fraction": args.fg_fraction,
            "train_step_ms_ratio": round(medians["train_step", "packed"] / medians["train_step", "dense"], 3),
            "eval_ms_ratio": round(medians["eval", "packed"] / medians["eval", "dense"], 3),
            "device": str(device),
            "threads": torch.get_num_threads(),
        }
        print(json.dumps(ratio), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
