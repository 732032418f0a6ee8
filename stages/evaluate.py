"""DVC stage `evaluate`: evaluate every trained (variant, seed) run; write the tidy table and the summary.

Outputs: ``<reports_dir>/eval/eval.csv`` (tidy rows, see :mod:`hardmask.evaluation.tidy`),
``<reports_dir>/eval/<variant>/seed<seed>/`` per run, and ``<reports_dir>/metrics.json``
(model -> split -> metric -> {mean, std, n}).
"""

from __future__ import annotations

from hardmask import layout
from hardmask.config import stage_cli
from hardmask.evaluation.runner import evaluate_all
from hardmask.evaluation.tidy import summarize
from hardmask.io import atomic_write_json, atomic_write_text


def main() -> None:
    cfg, _ = stage_cli(__doc__)
    table = evaluate_all(cfg)
    atomic_write_text(layout.eval_table(cfg), table.to_csv(index=False))
    atomic_write_json(layout.metrics_json(cfg), summarize(table))


if __name__ == "__main__":
    main()
