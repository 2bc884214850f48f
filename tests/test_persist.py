"""Safe persistence: bit-exact round trips, no pickle, refusal of unknown classes."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pydantic
import pytest
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline

import strainkit as sk
from strainkit._base import Estimator, ParamsModel
from strainkit.persist import FORMAT_VERSION

ROOT = Path(__file__).resolve().parents[1]


class Inner(Estimator):
    class Params(ParamsModel):
        radius: float = pydantic.Field(6.0, gt=0)
        shape: tuple[int, int] = (128, 128)

    def fit(self, X=None, y=None):
        rng = np.random.default_rng(3)
        self.template_ = rng.random((8, 8)).astype(np.float32)
        self.radius_ = np.float32(5.999)
        self.center_ = (63.5, np.nan)
        self.counts_ = np.arange(5, dtype=np.uint16)
        return self


class Outer(Estimator):
    class Params(ParamsModel):
        probe: Inner | None = None
        method: str = "dft"
        thresholds: dict = pydantic.Field(default_factory=lambda: {"rel": 0.01, "abs": 0.0})
        orders: tuple = (1, 2)

    def fit(self, X=None, y=None):
        self.table_ = {"a": np.linspace(0, 1, 7), "b": [np.ones(2), "text", None]}
        self.peaks_ = sk.BraggPeaks.from_positions([np.ones((3, 4))], scan_shape=(1, 1))
        return self


def assert_same(a, b):
    """Recursive bit-exact comparison of what save/load handles."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b)
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    elif hasattr(a, "_to_state"):
        assert_same(a._to_state(), b._to_state())
    elif hasattr(a, "get_params"):
        assert_same(a.get_params(deep=False), b.get_params(deep=False))
        fa = getattr(a, "_fitted_state", dict)()
        fb = getattr(b, "_fitted_state", dict)()
        assert_same(fa, fb)
    else:
        assert a == b


def _containers():
    rng = np.random.default_rng(7)
    cube = sk.DataCube(rng.integers(0, 60000, (3, 5, 16, 12), dtype=np.uint16))
    peaks = sk.BraggPeaks.from_positions(
        [rng.normal(size=(k, 4)) for k in (3, 0, 5, 2)],
        scan_shape=(2, 2),
        units="A^-1",
        frame="real",
        calibrations=("origin", "ellipse"),
        detector_shape=(128, 128),
        metadata={"q_pixel_size": 0.014, "note": [1, 2]},
    )
    shape = (3, 4)
    mask = rng.random(shape) > 0.3
    f = np.where(mask, 1.0, np.nan)
    lattice = sk.LatticeMap(
        origin=rng.normal(size=shape + (2,)) * f[..., None],
        g1=rng.normal(size=shape + (2,)) * f[..., None],
        g2=rng.normal(size=shape + (2,)) * f[..., None],
        covariance=rng.normal(size=shape + (6, 6)) * f[..., None, None],
        residual=rng.random(shape) * f,
        n_peaks=rng.integers(0, 49, shape),
        mask=mask,
    )
    strain = sk.StrainMap(
        *(rng.normal(size=shape) * f for _ in range(4)),
        mask,
        sigma_exx=rng.random(shape) * f,
        a=rng.random(shape) * f,
        frame_angle_deg=12.5,
    )
    return [cube, peaks, lattice, strain]


@pytest.mark.parametrize("obj", _containers(), ids=lambda o: type(o).__name__)
def test_containers_round_trip_bit_exactly(tmp_path, obj):
    path = sk.save(obj, tmp_path / "obj.h5")
    back = sk.load_model(path)
    assert_same(obj, back)
    if isinstance(obj, sk.DataCube):
        assert back.to_numpy().tobytes() == obj.to_numpy().tobytes()


def test_datacube_view_saves_materialised(tmp_path):
    cube = sk.DataCube(np.arange(4 * 6 * 8 * 8, dtype=np.float32).reshape(4, 6, 8, 8))
    view = cube.crop(ry=(1, 5)).bin(q=2)
    back = sk.load_model(sk.save(view, tmp_path / "view.h5"))
    np.testing.assert_array_equal(back.to_numpy(), view.to_numpy())


def test_nested_fitted_estimator_round_trips(tmp_path):
    outer = Outer(probe=Inner(radius=5.0).fit(), thresholds={"rel": 0.5, "abs": float("inf")})
    outer.fit()
    back = sk.load_model(sk.save(outer, tmp_path / "outer.h5"))
    assert_same(outer, back)
    assert_same(outer.probe, back.probe)
    assert isinstance(back.probe.center_, tuple) and back.probe.shape == (128, 128)
    assert back.probe.radius_.dtype == np.float32


def test_unfitted_estimator_round_trips(tmp_path):
    back = sk.load_model(sk.save(Inner(radius=2.5), tmp_path / "inner.h5"))
    assert back.radius == 2.5 and not back.__sklearn_is_fitted__()


def test_pipeline_with_frozen_steps_round_trips(tmp_path):
    pipe = Pipeline(
        [("probe", FrozenEstimator(Inner().fit())), ("find", Outer()), ("skip", "passthrough")]
    )
    back = sk.load_model(sk.save(pipe, tmp_path / "pipe.h5", provenance={"scan": "exp.h5"}))
    assert isinstance(back, Pipeline) and isinstance(back.steps[0][1], FrozenEstimator)
    assert_same(pipe.steps[0][1].estimator, back.steps[0][1].estimator)
    assert back.steps[2] == ("skip", "passthrough")
    with h5py.File(tmp_path / "pipe.h5") as f:
        assert json.loads(f.attrs["provenance"]) == {"__dict__": {"scan": "exp.h5"}}
        assert json.loads(f.attrs["versions"])["strainkit"] == sk.__version__


def test_library_never_uses_pickle():
    hits = [
        f"{p}:{i}"
        for p in (ROOT / "strainkit").rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "pickle" in line
    ]
    assert hits == []


def test_unknown_class_is_refused_and_nothing_runs(tmp_path):
    path = sk.save(Inner(), tmp_path / "model.h5")
    with h5py.File(path, "a") as f:
        f["object"].attrs["class"] = "evil_module_never_imported.Payload"
    with pytest.raises(ValueError, match="evil_module_never_imported.Payload.*Nothing in it"):
        sk.load_model(path)
    assert "evil_module_never_imported" not in sys.modules
    with h5py.File(path, "a") as f:
        f["object"].attrs["class"] = "builtins.eval"
    with pytest.raises(ValueError, match="'builtins.eval', which strainkit does not know"):
        sk.load_model(path)


def test_unsavable_objects_raise_before_writing(tmp_path):
    with pytest.raises(TypeError, match="strainkit saves only its own"):
        sk.save(object(), tmp_path / "x.h5")
    with pytest.raises(TypeError, match="cannot save a builtins.object"):
        sk.save(Outer(thresholds={"fn": object()}), tmp_path / "y.h5")
    assert not any(tmp_path.iterdir())


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        sk.load_model(tmp_path / "missing.h5")
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(sk.FileFormatError, match="not a readable HDF5 file"):
        sk.load_model(text)
    good = sk.save(Inner().fit(), tmp_path / "good.h5")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(sk.FileFormatError, match="truncated"):
        sk.load_model(truncated)
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["data"] = np.zeros((2, 2, 4, 4))
    with pytest.raises(sk.FileFormatError, match="not one written by strainkit.save.*read"):
        sk.load_model(plain)


def test_newer_files_warn_or_refuse(tmp_path):
    path = sk.save(Inner(), tmp_path / "model.h5")
    with h5py.File(path, "a") as f:
        f.attrs["versions"] = json.dumps({"strainkit": "99.0.0"})
    with pytest.warns(UserWarning, match="written by strainkit 99.0.0, newer"):
        sk.load_model(path)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(sk.FileFormatError, match="upgrade strainkit"):
        sk.load_model(path)


def test_failed_save_keeps_earlier_file(tmp_path, monkeypatch):
    path = sk.save(Inner(radius=1.5), tmp_path / "model.h5")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sk.persist, "_write_node", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        sk.save(Inner(radius=9.0), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.h5"]


def test_killed_save_keeps_earlier_file(tmp_path):
    path = tmp_path / "cube.h5"
    sk.save(sk.DataCube(np.ones((2, 2, 4, 4), np.float32)), path)
    before = path.read_bytes()
    script = textwrap.dedent(
        f"""
        import numpy as np, strainkit as sk, sys
        cube = sk.DataCube(np.ones((400, 400, 32, 32), np.float32))  # 650 MB
        print("ready", flush=True)
        sk.save(cube, {str(path)!r})
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=ROOT, env=os.environ.copy()
    )
    assert proc.stdout.readline().strip() == b"ready"
    deadline = time.time() + 30
    while time.time() < deadline and not list(tmp_path.glob(".cube.h5.*.tmp")):
        time.sleep(0.01)
    time.sleep(0.2)  # well inside the write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    assert sk.load_model(path).shape == (2, 2, 4, 4)


def test_crystal_parameters_round_trip(tmp_path):
    pixel = sk.PixelCalibrator(crystal=sk.crystal.diamond(5.431))
    back = sk.load_model(sk.save(pixel, tmp_path / "pixel.h5"))
    assert back.crystal == pixel.crystal and back.crystal.name == "diamond"
