"""Image-classification training (``regla train``; evaluation is :mod:`regla.eval`, curves ``regla plot``).

Follows ReGLA §4.1: ImageNet-1K at 224 px, 300 epochs with a 20-epoch linear warm-up and the ConvNeXt/iFormer
recipe, built from timm's data, augmentation, optimizer, scheduler, loss and EMA components, run on the one harness
(:mod:`regla.runs`). Modules: ``config`` (recipes and overrides), ``data`` (the datasets and loaders a recipe asks
for; the folders themselves are :mod:`regla.data.folders`), ``modeling`` (the timm classifier), ``task`` (data,
loss and top-1 for the harness; the loop is :mod:`regla.eval.loop`), ``deit_kd`` (DeiT-style hard/soft
distillation from a CNN teacher), ``trainer`` (a whole run), ``demo`` (the digits demo recipe) and ``cli``.
"""
