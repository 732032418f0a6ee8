"""Evaluation of trained runs (method spec §4.2, §6, §7, §10.3-10.6).

- :mod:`~hardmask.metrics`: pure metric functions (accuracies, worst-group, adjusted average,
  BG-gap, AUROC, foreground IoU, NMI/ARI, foreground fraction);
- :mod:`~hardmask.evaluation.interventions`: part thresholds, leave-one-part-out, part removal, selection;
- :mod:`~hardmask.evaluation.inference`: one deterministic pass over a split under several interventions;
- :mod:`~hardmask.evaluation.runner`: ``evaluate_run`` (tidy rows, per-run files, MLflow);
- :mod:`~hardmask.evaluation.pool`: ``evaluate_all``, every run in ``evaluate.workers`` processes;
- :mod:`~hardmask.evaluation.tidy`: the tidy table's conventions ``summarize`` (eval/summary.json) and
``headline`` (the DVC metrics).
"""
