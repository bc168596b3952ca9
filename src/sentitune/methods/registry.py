"""The one method registry: CLI choices, docs and the test matrix are all built from it.

Example:
    >>> from sentitune.methods import registry
    >>> registry.get("lora").default_learning_rate
    0.001
"""

from __future__ import annotations

from sentitune.methods.base import Method


_METHODS: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator; names are lowercase and unique."""
    name = cls.name
    if not name or name != name.lower():
        raise ValueError(f"method name must be lowercase and non-empty, got {name!r}")
    if name in _METHODS:
        raise ValueError(f"method {name!r} is already registered")
    _METHODS[name] = cls()
    return cls


def get(name: str) -> Method:
    _ensure_loaded()
    try:
        return _METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; registered: {', '.join(names())}") from None


def names() -> list[str]:
    _ensure_loaded()
    return list(_METHODS)


def neural_names() -> list[str]:
    return [n for n in names() if get(n).neural]


def _ensure_loaded() -> None:
    # Importing the package registers every bundled method module.
    import sentitune.methods  # noqa: F401
