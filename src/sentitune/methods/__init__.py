"""Adaptation methods. Each module registers one method; adding a method is one small module
imported here."""

from sentitune.methods import full, head, lora, tfidf  # noqa: F401  (registration side effects)
from sentitune.methods.registry import get, names, neural_names  # noqa: F401
