"""The benchmark study (issue #8): PRUNE next to retraining and the unlearning baselines people
use, on the same data with the same metrics. One command, seeded, resumable; results under
``benchmarks/results/study/``, the document in ``docs/BENCHMARKS.md``.

Stages: :mod:`~benchmarks.study.plan` (cells and configs), :mod:`~benchmarks.study.artifacts`
(cached models shared by cells), :mod:`~benchmarks.study.methods` (one runner per kind of
method), :mod:`~benchmarks.study.evaluate` (metrics), :mod:`~benchmarks.study.cell` (one cell in
one process), :mod:`~benchmarks.study.runner` (the resumable loop),
:mod:`~benchmarks.study.summarise` (CSV, tables, plots).
"""
