"""BitFit (Ben Zaken et al. 2022): only bias terms of the encoder train, plus the head."""

from sentitune.methods.base import FrozenBaseMethod, freeze_all_but, head_module_names
from sentitune.methods.pooling import model_pooling
from sentitune.methods.registry import register


@register
class BitFit(FrozenBaseMethod):
    name = "bitfit"
    # The paper's grid for BERT-base is 1e-4..1e-3; biases are few and need the larger steps.
    default_learning_rate = 1e-3
    summary = "bias terms + head train, all weights frozen"

    def mark_trainable(self, model, cfg):
        freeze_all_but(model, head_module_names(cfg, model_pooling(model)))
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.requires_grad = True
        return model
