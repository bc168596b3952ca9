"""Full fine-tuning: no wrapper, every parameter trains."""

from sentitune.methods.base import Method
from sentitune.methods.registry import register


@register
class Full(Method):
    name = "full"
    # BERT's grid is {2e-5, 3e-5, 5e-5}; on short schedules (the quick preset: 125 steps) 2e-5 has not
    # left chance yet, 5e-5 has (README, "How the defaults were chosen").
    default_learning_rate = 5e-5
    summary = "every parameter trains"

    def mark_trainable(self, model, cfg):
        for parameter in model.parameters():
            parameter.requires_grad = True
        return model
