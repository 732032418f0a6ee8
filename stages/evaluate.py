"""DVC stage `evaluate`: evaluate every trained (variant, seed) run; write the tidy table and the summaries.

Outputs: ``<reports_dir>/eval/`` (``eval.csv``: tidy rows, see :mod:`hardmask.evaluation.tidy`;
``summary.json``: every metric, mean/std/n over seeds; ``variants.json``: what each variant is;
``<variant>/seed<seed>/`` per run) and the DVC metrics ``<reports_dir>/metrics/<model>.json`` (the headline
per model). The headline also goes to each variant's MLflow parent run.
"""

from __future__ import annotations

from hardmask import layout
from hardmask.config import flatten, run_stage, stage_cli
from hardmask.evaluation.pool import evaluate_all
from hardmask.evaluation.tidy import headline, summarize
from hardmask.io import atomic_dir, atomic_write_json, atomic_write_text
from hardmask.models import describe_variants
from hardmask.tracking import log_parent_metrics


def main() -> None:
    cfg, _ = stage_cli(__doc__)
    table = evaluate_all(cfg)
    atomic_write_text(layout.eval_table(cfg), table.to_csv(index=False))
    atomic_write_json(layout.eval_summary(cfg), summarize(table))
    atomic_write_json(layout.eval_variants(cfg), describe_variants(cfg.train.variants))
    models = headline(table)
    with atomic_dir(layout.metrics_dir(cfg)) as tmp:
        for model, record in models.items():
            atomic_write_json(tmp / f"{model}.json", record)
    parents = {model: {k: v for k, v in flatten(r).items() if v is not None} for model, r in models.items()}
    log_parent_metrics(cfg, parents)


if __name__ == "__main__":
    run_stage(main)
