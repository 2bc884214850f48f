"""pytest configuration shared by the tests and the doctests."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")  # figures render off-screen in tests

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _doctest_numpy(doctest_namespace):
    # Docstring examples assume `import numpy as np`, as every numpy-based library's do.
    doctest_namespace["np"] = np


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
