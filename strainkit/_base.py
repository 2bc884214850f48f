"""The estimator base: parameters declared once, validated in ``fit``, saved safely.

Every strainkit estimator declares its parameters once, as a pydantic model in a nested
``Params`` class. From that model the base builds ``__init__`` (which only stores its
keyword arguments, as scikit-learn requires) and the signature scikit-learn inspects for
``get_params``/``set_params``/``clone``/``repr``. ``fit`` calls :meth:`Estimator._validated`
to check the stored values, which raises a ``ValueError`` naming the parameter, the value
and what is allowed.

Every subclass is entered in strainkit's class registry, the only place
:func:`strainkit.load_model` looks up classes, so loading a file can instantiate nothing
else.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, ClassVar

import pydantic
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from strainkit._registry import register

__all__ = ["Estimator", "ParamsModel", "format_validation_error"]


class ParamsModel(pydantic.BaseModel):
    """Base of every estimator's ``Params`` model: strict about unknown names, frozen.

    Examples
    --------
    >>> class P(ParamsModel):
    ...     radius: float = 1.0
    >>> P(radius=2).radius
    2.0
    """

    model_config = pydantic.ConfigDict(
        extra="forbid", frozen=True, arbitrary_types_allowed=True, validate_default=True
    )


def format_validation_error(owner: str, err: pydantic.ValidationError) -> str:
    """One readable message for all problems in a pydantic ``ValidationError``.

    Each line names the parameter, the value given and what is allowed.

    Examples
    --------
    >>> class P(ParamsModel):
    ...     radius: float = pydantic.Field(1.0, gt=0)
    >>> try:
    ...     P(radius=-1)
    ... except pydantic.ValidationError as e:
    ...     print(format_validation_error("Demo", e))
    Demo: invalid parameter radius=-1: Input should be greater than 0.
    """
    lines = []
    for problem in err.errors(include_url=False):
        name = ".".join(str(p) for p in problem["loc"]) or "<parameters>"
        lines.append(
            f"{owner}: invalid parameter {name}={problem.get('input')!r}: {problem['msg']}."
        )
    return "\n".join(lines)


def _make_init(fields: dict[str, Any]):
    """An ``__init__`` storing keyword arguments and a signature scikit-learn can read."""
    names = tuple(fields)

    def __init__(self, **kwargs):
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unexpected parameter(s) {unknown}; "
                f"allowed: {list(names)}"
            )
        for name in names:
            value = kwargs[name] if name in kwargs else fields[name]
            # a fresh copy of a mutable default, so instances never share one
            setattr(self, name, copy.copy(value) if name not in kwargs else value)

    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
        for name, default in fields.items()
    ]
    __init__.__signature__ = inspect.Signature(params)
    return __init__


class Estimator(BaseEstimator):
    """Base class of strainkit estimators (a scikit-learn ``BaseEstimator``).

    Subclasses define a nested ``Params(ParamsModel)`` with every parameter and its
    default; ``__init__`` is generated from it. Fitted attributes end in an underscore.
    A subclass that learns nothing sets ``_stateless = True`` so that scikit-learn's
    ``Pipeline`` treats it as fitted.

    Examples
    --------
    >>> import pydantic
    >>> class Scale(Estimator):
    ...     class Params(ParamsModel):
    ...         factor: float = pydantic.Field(2.0, gt=0)
    ...
    ...     def fit(self, X=None, y=None):
    ...         self.factor_ = self._validated().factor
    ...         return self
    >>> Scale(factor=3.0)
    Scale(factor=3.0)
    >>> Scale(factor=-1).fit()
    Traceback (most recent call last):
    ...
    ValueError: Scale: invalid parameter factor=-1: Input should be greater than 0.
    """

    Params: ClassVar[type[ParamsModel]] = ParamsModel
    _stateless: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "Params" in cls.__dict__ and "__init__" not in cls.__dict__:
            defaults = {
                name: f.get_default(call_default_factory=True)
                for name, f in cls.Params.model_fields.items()
            }
            cls.__init__ = _make_init(defaults)
        register(cls)

    def _validated(self) -> ParamsModel:
        """The current parameters, checked and coerced by the ``Params`` model."""
        try:
            return self.Params(**self.get_params(deep=False))
        except pydantic.ValidationError as err:
            raise ValueError(format_validation_error(type(self).__name__, err)) from None

    def _fitted_state(self) -> dict[str, Any]:
        """What ``fit`` learned: the public attributes whose names end in ``_``."""
        return {
            k: v
            for k, v in vars(self).items()
            if k.endswith("_") and not k.startswith("_") and not k.endswith("__")
        }

    def __sklearn_is_fitted__(self) -> bool:
        return self._stateless or bool(self._fitted_state())

    def _check_fitted(self) -> None:
        """Raise scikit-learn's ``NotFittedError`` with a hint when ``fit`` never ran."""
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet: call fit(...) first, or load "
                "a fitted one with strainkit.load_model(path)."
            )
