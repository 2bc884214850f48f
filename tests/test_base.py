"""The estimator base: scikit-learn conventions and parameter validation."""

from typing import Literal

import numpy as np
import pydantic
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline

from strainkit._base import Estimator, ParamsModel


class Shift(Estimator):
    """Adds a learned offset; a tiny estimator used to test the base."""

    class Params(ParamsModel):
        amount: float = pydantic.Field(1.0, gt=0)
        mode: Literal["add", "sub"] = "add"
        inner: Estimator | None = None

    def fit(self, X, y=None):
        p = self._validated()
        self.offset_ = float(np.mean(X)) + p.amount
        return self

    def transform(self, X):
        self._check_fitted()
        return X + self.offset_ if self.mode == "add" else X - self.offset_


class Noop(Estimator):
    class Params(ParamsModel):
        pass

    _stateless = True

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return X


def test_init_stores_only_and_signature_is_readable():
    est = Shift(amount=-5, mode="bogus")  # no validation in __init__
    assert est.amount == -5 and est.mode == "bogus"
    assert est.get_params() == {"amount": -5, "mode": "bogus", "inner": None}


def test_get_set_params_clone_repr():
    est = Shift(amount=2.0, inner=Shift(amount=3.0))
    assert est.get_params()["inner__amount"] == 3.0
    est.set_params(inner__mode="sub", amount=4.0)
    assert est.inner.mode == "sub" and est.amount == 4.0
    twin = clone(est)
    assert twin is not est and twin.inner is not est.inner
    assert twin.get_params(deep=False)["amount"] == 4.0
    assert repr(est) == "Shift(amount=4.0, inner=Shift(amount=3.0, mode='sub'))"


def test_unknown_parameter_is_refused():
    with pytest.raises(TypeError, match="unexpected parameter.*'radius'"):
        Shift(radius=1)
    with pytest.raises(ValueError, match="Invalid parameter 'radius'"):
        Shift().set_params(radius=1)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"amount": -1.0}, r"amount=-1.0: Input should be greater than 0"),
        ({"mode": "mul"}, r"mode='mul': Input should be 'add' or 'sub'"),
        ({"amount": "lots"}, r"amount='lots': Input should be a valid number"),
        ({"inner": 3}, r"inner=3: Input should be an instance of Estimator"),
    ],
)
def test_fit_validation_names_parameter_value_and_allowed(kwargs, pattern):
    with pytest.raises(ValueError, match=r"Shift: invalid parameter " + pattern):
        Shift(**kwargs).fit(np.zeros(3))


def test_not_fitted_before_fit_and_fitted_after():
    est = Shift()
    with pytest.raises(NotFittedError, match="not fitted yet: call fit"):
        est.transform(np.zeros(2))
    est.fit(np.ones(2))
    assert est.transform(np.zeros(2)).tolist() == [2.0, 2.0]


def test_pipeline_and_frozen_estimator_do_not_refit():
    fitted = Shift().fit(np.ones(3))
    pipe = Pipeline([("noop", Noop()), ("shift", FrozenEstimator(fitted))])
    pipe.fit(np.full(3, 100.0))
    assert fitted.offset_ == 2.0  # untouched by the pipeline fit
    assert pipe.transform(np.zeros(1)).tolist() == [2.0]
    # a stateless step counts as fitted
    Pipeline([("noop", Noop())]).transform(np.zeros(1))
