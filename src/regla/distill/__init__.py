"""Multi-teacher feature distillation (ReGLA §3.5, Table 8), on UNIC's method (Sariyildiz et al., ECCV 2024).

Modules: ``teachers`` (the seven teachers of §3.5 and Table 8's sets, run by timm), ``release`` (their released
checkpoints' layouts, loaded strictly through :mod:`regla.checkpoints`, and the frozen teacher built from one),
``student`` (the ladder over all stages of a backbone and the per-teacher projection heads, plus the teacher-feature
statistics), ``losses`` (UNIC's cosine + smooth-L1 losses, teacher dropping, standardisation), ``task`` (the
:class:`~regla.runs.task.Task` the run harness trains), ``config`` (the recipe schema), ``demo`` and ``cli``
(``regla distill``).
"""
