"""Prefix tuning via peft (P-tuning v2 style for classification): trainable key/value prefixes of
`method.prefix_tokens` virtual tokens in every layer, base frozen, head trainable. Unlike LoRA the
prefixes cannot be merged into the weights, so inference keeps the peft wrapper (and ONNX export
is not supported for it)."""

from sentitune.methods.base import PeftMethod, head_module_names
from sentitune.methods.registry import register


@register
class Prefix(PeftMethod):
    name = "prefix"
    default_learning_rate = 1e-2
    summary = "trainable per-layer key/value prefixes + trainable head"
    mergeable = False

    def peft_config(self, cfg):
        from peft import PrefixTuningConfig, TaskType

        return PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=cfg.prefix_tokens,
                                  modules_to_save=head_module_names(cfg))
