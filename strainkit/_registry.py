"""The registry of classes that :func:`strainkit.load_model` may instantiate.

A saved file names its classes by a registry key. Loading looks the key up here and
nowhere else: it never imports a module or resolves a name from a file, so a file from a
stranger can build only classes that the running program already imported and trusts.
"""

from __future__ import annotations

__all__ = ["class_key", "lookup", "register", "registered"]

_REGISTRY: dict[str, type] = {}


def class_key(cls: type) -> str:
    """The registry key of a class: its module and qualified name.

    Examples
    --------
    >>> from sklearn.pipeline import Pipeline
    >>> class_key(Pipeline)
    'sklearn.pipeline.Pipeline'
    """
    return f"{cls.__module__}.{cls.__qualname__}"


def register(cls: type) -> type:
    """Enter ``cls`` in the registry (usable as a class decorator).

    Examples
    --------
    >>> @register
    ... class Thing:
    ...     pass
    >>> lookup(class_key(Thing)) is Thing
    True
    """
    _REGISTRY[class_key(cls)] = cls
    return cls


def lookup(key: str) -> type:
    """The registered class of ``key``; a ``ValueError`` naming it when unknown.

    Examples
    --------
    >>> lookup("os.system")
    Traceback (most recent call last):
    ...
    ValueError: the file names the class 'os.system', which strainkit does not know...
    """
    try:
        return _REGISTRY[key]
    except KeyError:
        raise ValueError(
            f"the file names the class {key!r}, which strainkit does not know; it may come "
            "from a newer strainkit or a plug-in that is not imported, or the file may not "
            "be trustworthy. Nothing in it was executed. Known classes: "
            f"{sorted(k for k in _REGISTRY if k.startswith('strainkit.'))}"
        ) from None


def registered() -> list[str]:
    """Keys of every registered class.

    Examples
    --------
    >>> "sklearn.pipeline.Pipeline" in registered()
    True
    """
    return sorted(_REGISTRY)


def _register_sklearn() -> None:
    # scikit-learn's composition classes are trusted: their state is their parameters.
    from sklearn.frozen import FrozenEstimator
    from sklearn.pipeline import Pipeline

    register(Pipeline)
    register(FrozenEstimator)


_register_sklearn()
