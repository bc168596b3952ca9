"""Frozen encoder: only the head trains (classifier, or pooler + classifier per `method.head`)."""

from sentitune.methods.base import FrozenBaseMethod, freeze_all_but, head_module_names
from sentitune.methods.pooling import model_pooling
from sentitune.methods.registry import register


@register
class Head(FrozenBaseMethod):
    name = "head"
    # A lone linear layer on frozen features tolerates (and needs) a much larger step than fine-tuning.
    default_learning_rate = 1e-3
    summary = "encoder frozen; only the head trains"

    def mark_trainable(self, model, cfg):
        freeze_all_but(model, head_module_names(cfg, model_pooling(model)))
        return model
