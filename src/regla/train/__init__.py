"""Image-classification training (``regla train``, ``regla plot``; evaluation is :mod:`regla.eval`).

Follows ReGLA §4.1: ImageNet-1K at 224 px, 300 epochs with a 20-epoch linear warm-up and the ConvNeXt/iFormer
recipe, built from timm's data, augmentation, optimizer, scheduler, loss and EMA components. Modules:
``config`` (recipes and overrides), ``data`` (datasets, loaders, input checks), ``modeling`` (model, SyncBN, DDP),
``engine`` (train/eval loops), ``distill`` (DeiT-style distillation), ``checkpoint`` (atomic save/resume),
``logs`` (CSV/JSONL/TensorBoard), ``signals`` (clean stops), ``trainer`` (a whole run), ``demo`` (digits demo
data), and the ``cli`` and ``plot_cli`` subcommands.
"""
