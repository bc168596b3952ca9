"""Full fine-tuning: no wrapper, every parameter trains."""

from sentitune.methods.base import Method
from sentitune.methods.registry import register


@register
class Full(Method):
    name = "full"
    default_learning_rate = 2e-5
    summary = "every parameter trains"

    def prepare(self, model, cfg):
        for parameter in model.parameters():
            parameter.requires_grad = True
        return model
