"""pytest configuration shared by the tests and the doctests."""

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _doctest_numpy(doctest_namespace):
    # Docstring examples assume `import numpy as np`, as every numpy-based library's do.
    doctest_namespace["np"] = np
