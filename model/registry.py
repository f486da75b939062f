"""The registry of task kinds: the core looks a kind up by name and never imports one.

The plug-ins register themselves when ``model.kinds`` is imported, which the entry points do (run.py,
train.py, ``python -m model.score``, ``python -m model.submissions``), as detectron2's registries are filled
by the modules that define their entries. A kind is registered as an instance, so a kind class that lacks a
method of the interface (``model.kinds.base.Kind``'s abstract methods) fails when its module is imported,
not deep in a run.
"""
from __future__ import annotations

_KINDS: dict = {}


def register(kind_class):
    """Class decorator: register one instance of ``kind_class`` under its ``name``."""
    kind = kind_class()                       # TypeError here for a class with an abstract method left
    if not kind.name or kind.name in _KINDS and type(_KINDS[kind.name]) is not kind_class:
        raise ValueError(f"kind {kind.name!r}: a kind needs a name that no other kind has")
    _KINDS[kind.name] = kind
    return kind_class


def unregister(name: str) -> None:
    """Remove a kind (tests that register a toy kind clean up after themselves)."""
    _KINDS.pop(name, None)


def kinds() -> dict:
    """Every registered kind by name, in registration order."""
    if not _KINDS:
        raise RuntimeError("no task kind is registered: an entry point must import model.kinds first")
    return dict(_KINDS)
