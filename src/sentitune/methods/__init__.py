"""Adaptation methods. Each module registers one method; adding a method is one small module
imported here. Import order is registry order, which CLI choices and default tables follow: the four
core methods first, then the other PEFT methods, then the sentence-encoder methods that fit a
logistic-regression head (embed, setfit)."""

# isort: off
from sentitune.methods import full, lora, head, tfidf, bitfit, dora, ia3, prefix, embed, setfit  # noqa: F401

# isort: on
from sentitune.methods.registry import get, names, neural_names  # noqa: F401
