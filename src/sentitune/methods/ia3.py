"""(IA)^3 via peft: learned vectors that rescale keys, values and the feed-forward activations
(Liu et al. 2022), peft's BERT targets. Far fewer parameters than LoRA; merges at inference."""

from sentitune.methods.base import PeftMethod, head_module_names
from sentitune.methods.registry import register


@register
class Ia3(PeftMethod):
    name = "ia3"
    # Scaling vectors start at 1 and need large steps, as in the paper's 3e-3.
    default_learning_rate = 3e-3
    summary = "learned rescaling of keys, values and FFN activations + trainable head"

    def peft_config(self, cfg, pooling):
        from peft import IA3Config, TaskType

        return IA3Config(task_type=TaskType.SEQ_CLS, modules_to_save=head_module_names(cfg, pooling))
