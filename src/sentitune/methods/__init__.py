"""Adaptation methods. Each module registers one method; adding a method is one small module
imported here."""

from sentitune.methods import bitfit, dora, full, head, ia3, lora, prefix, tfidf  # noqa: F401  (registration)
from sentitune.methods.registry import get, names, neural_names  # noqa: F401
