"""Markdown tables of the recorded attempts (experiments/{results,quick}.jsonl) for reports/experiments.md.

python -m experiments.summarize            # print both tables
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from experiments.sweep import REPO

SHORT = {"baseline_vit": "base", "two_stage_hard": "hard", "two_stage_soft": "soft", "oracle_mask": "oracle"}


def _read(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _fmt(value) -> str:
    return "" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def quick_table() -> str:
    rows = [
        "| setting | overrides | model | val avg | val WGA | best-epoch val WGA | fg IoU | fg frac | CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in _read(REPO / "experiments" / "quick.jsonl"):
        final = r["final"]
        overrides = "; ".join(o for o in r["overrides"] if not o.startswith("model.backbone.kwargs=")) or "-"
        if r.get("note"):
            overrides += f" ({r['note']})"
        model = SHORT.get(r["variant"], r["variant"])
        rows.append(
            f"| {r['setting']} | {overrides} | {model} | {_fmt(final['val_avg'])} "
            f"| {_fmt(final['val_wga'])} | {_fmt(r['best_val_wga'])} | {_fmt(final.get('val_fg_iou'))} "
            f"| {_fmt(final.get('val_fg_frac'))} | {r['cpu_s']:.0f} |"
        )
    return "\n".join(rows)


def sweep_table() -> str:
    """One row per (setting, model): mean over its seeds of the best-checkpoint validation numbers."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in _read(REPO / "experiments" / "results.jsonl"):
        groups[(r["setting"], r["variant"])].append(r)
    rows = [
        "| setting | model | seeds | val avg | val WGA | last-epoch val WGA | fg IoU | train CPU s"
        " | eval CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (setting, variant), runs in groups.items():

        def mean(key: str, runs: list[dict] = runs) -> float | None:
            values = [r[key] for r in runs if r.get(key) is not None]
            return sum(values) / len(values) if values else None

        rows.append(
            f"| {setting} | {SHORT.get(variant, variant)} | {len(runs)} | {_fmt(mean('val/avg_acc'))} "
            f"| {_fmt(mean('val/worst_group_acc'))} | {_fmt(mean('last/val/worst_group_acc'))} "
            f"| {_fmt(mean('val/fg_iou'))} | {_fmt(mean('train_cpu_s'))} | {_fmt(mean('eval_cpu_s'))} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(sweep_table())
    print()
    print(quick_table())
