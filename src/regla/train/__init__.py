"""Image-classification training (``regla train``, ``regla plot``; evaluation is :mod:`regla.eval`).

Follows ReGLA §4.1: ImageNet-1K at 224 px, 300 epochs with a 20-epoch linear warm-up and the ConvNeXt/iFormer
recipe, built from timm's data, augmentation, optimizer, scheduler, loss and EMA components, run on the one harness
(:mod:`regla.runs`). Modules: ``config`` (recipes and overrides), ``data`` (datasets, loaders, input checks),
``modeling`` (the timm classifier), ``task`` (data, loss and top-1 for the harness), ``evaluate`` (top-1/top-5),
``distill`` (DeiT-style distillation), ``trainer`` (a whole run), ``demo`` (digits demo data), and the ``cli`` and
``plot_cli`` subcommands.
"""
