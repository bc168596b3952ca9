"""DoRA via peft: LoRA's low-rank update applied to the direction of each weight, with a separate
trainable magnitude vector (Liu et al. 2024). Same knobs as LoRA (`method.lora_*`)."""

from sentitune.methods.lora import Lora
from sentitune.methods.registry import register


@register
class Dora(Lora):
    name = "dora"
    summary = "LoRA with a trainable per-column magnitude (weight-decomposed)"
    use_dora = True
