"""The classifier ``regla train`` trains: timm ``create_model`` with the recipe's options (SyncBN and DDP are the
harness's, :mod:`regla.runs.ddp`)."""

from __future__ import annotations

from typing import Any

from torch import nn


def create_student(cfg: dict[str, Any], num_classes: int) -> nn.Module:
    """The model to train, from timm's registry (``import regla`` registers regla_t ... regla_x)."""
    import timm

    import regla  # noqa: F401  (registers our models)
    from regla.errors import UsageError

    kwargs: dict[str, Any] = dict(cfg["model_kwargs"] or {}, num_classes=num_classes)
    if cfg["drop_path"]:  # stochastic depth; some peers (RepViT) have none and reject the argument
        kwargs["drop_path_rate"] = cfg["drop_path"]
    if cfg["in_chans"] != 3:
        kwargs["in_chans"] = cfg["in_chans"]
    if cfg["distillation_type"] != "none":
        kwargs["distillation"] = True
    try:
        model = timm.create_model(cfg["model"], pretrained=False, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ValueError(f"unknown model {cfg['model']!r}; `regla models` lists ours, "
                             "timm.list_models() all") from e
        raise
    except TypeError as e:
        raise UsageError(f"{cfg['model']} does not accept {sorted(kwargs)}: {e}") from e
    except ValueError as e:  # a constructor switch with a value it does not allow (the message names the allowed)
        raise UsageError(f"{cfg['model']} model_kwargs {cfg['model_kwargs'] or {}}: {e}") from e
    if cfg["distillation_type"] != "none":
        if not hasattr(model, "set_distilled_training"):
            raise ValueError(f"{cfg['model']} has no distillation head (set_distilled_training); "
                             "use a model built with distillation=True such as regla_* or repvit_*")
        model.set_distilled_training(True)
    if cfg["grad_checkpointing"]:
        model.set_grad_checkpointing(True)
    return model
