"""Adaptation methods. Each module registers one method; adding a method is one small module
imported here. Import order is registry order, which CLI choices and default tables follow: the four
core methods first, then the other PEFT methods."""

# isort: off
from sentitune.methods import full, lora, head, tfidf, bitfit, dora, ia3, prefix  # noqa: F401  (registration)

# isort: on
from sentitune.methods.registry import get, names, neural_names  # noqa: F401
