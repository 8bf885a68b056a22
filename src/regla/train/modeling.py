"""The classifier ``regla train`` trains: timm ``create_model`` with the recipe's options (SyncBN and DDP are the
harness's, :mod:`regla.runs.distributed`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from regla.config import Recipe


def create_student(cfg: Recipe, num_classes: int) -> nn.Module:
    """The model to train, from timm's registry (``import regla`` registers regla_t ... regla_x)."""
    import timm

    import regla  # noqa: F401  (registers our models)
    from regla.errors import UsageError

    kwargs: dict[str, Any] = dict(cfg.task.model_kwargs or {}, num_classes=num_classes)
    if cfg.task.drop_path:  # stochastic depth; some peers (RepViT) have none and reject the argument
        kwargs["drop_path_rate"] = cfg.task.drop_path
    if cfg.task.in_chans != 3:
        kwargs["in_chans"] = cfg.task.in_chans
    if cfg.task.distillation_type != "none":
        kwargs["distillation"] = True
    try:
        model = timm.create_model(cfg.task.model, pretrained=False, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ValueError(f"unknown model {cfg.task.model!r}; `regla models` lists ours, "
                             "timm.list_models() all") from e
        raise
    except TypeError as e:
        raise UsageError(f"{cfg.task.model} does not accept {sorted(kwargs)}: {e}") from e
    except ValueError as e:  # a constructor switch with a value it does not allow (the message names the allowed)
        raise UsageError(f"{cfg.task.model} model_kwargs {cfg.task.model_kwargs or {}}: {e}") from e
    if cfg.task.distillation_type != "none":
        if not hasattr(model, "set_distilled_training"):
            raise ValueError(f"{cfg.task.model} has no distillation head (set_distilled_training); "
                             "use a model built with distillation=True such as regla_* or repvit_*")
        model.set_distilled_training(True)
    if cfg.task.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model
