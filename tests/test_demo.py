"""The demo runs the whole workflow from files and recovers the simulation's truth."""

import numpy as np
import pytest

import strainkit as sk
from strainkit import cli, simulate
from strainkit.demo import format_report, reference_rows, run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    # (its speed is measured by running `strainkit demo`, not asserted here)
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, scan=12, calibration_scan=20, progress=False)


def test_demo_writes_every_file(demo):
    out, result = demo
    names = (
        "vacuum.h5",
        "calibration.h5",
        "images.h5",
        "experiment.h5",
        "strain.h5",
        "pipeline.h5",
        "strain.png",
        "qc_origin.png",
        "qc_bvm.png",
        "qc_rotation.png",
        "report.txt",
    )
    for name in names:
        assert (out / name).stat().st_size > 0, name
    strain = sk.load_model(out / "strain.h5")
    assert isinstance(strain, sk.StrainMap) and strain.scan_shape == (12, 12)
    np.testing.assert_array_equal(strain.exx, result["strain_map"].exx)
    pipe = sk.load_model(out / "pipeline.h5")
    again = pipe.transform(sk.read(out / "experiment.h5"))
    np.testing.assert_array_equal(again.exx, strain.exx)
    assert (out / "report.txt").read_text(encoding="utf-8") == format_report(result)
    assert set(result["timings"]) >= {
        "simulate and write the data",
        "strain pipeline (experiment)",
    }


def test_measured_calibrations_match_the_truth(demo):
    _, result = demo
    rows = {name: (measured, truth) for name, measured, truth, _ in result["calibrations"]}
    measured, truth = rows["rotation"]
    assert abs(measured - truth) < 0.2
    assert rows["flip"][0] is rows["flip"][1] is True
    measured, truth = rows["pixel size"]
    assert measured == pytest.approx(truth, rel=1e-3)
    measured, truth = rows["ellipse a/b"]
    assert measured == pytest.approx(truth, rel=1e-3)
    measured, truth = rows["ellipse angle"]
    assert abs(measured - truth) < 1.0


def test_strain_errors_are_small_against_the_truth(demo):
    out, result = demo
    rows = {name: (error, field) for name, error, field, _ in result["strain"]}
    for name in ("exx", "eyy", "exy"):
        error, field = rows[name]
        assert error < 0.1 and field > 0.1, name  # % ; fields of ~1 %
    assert rows["theta_deg"][0] < 0.05
    assert rows["valid positions"] == (144, 144)
    # the reference region the demo chose is where the sample is unstrained
    truth = simulate.read_truth(out / "experiment.h5")
    np.testing.assert_array_equal(reference_rows((12, 12)), truth["reference_mask"])


def test_cli_demo_prints_the_table(tmp_path, capsys):
    argv = ["demo", "--out", str(tmp_path), "--scan", "8", "--calibration-scan", "16"]
    assert cli.main([*argv, "--quiet", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "rotation" in printed and "pixel size" in printed and "total" in printed
    assert (tmp_path / "strain.png").exists()


def test_cli_demo_reports_errors(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cli.main(["demo", "--out", str(blocker / "sub"), "--quiet"]) == 1
    assert "strainkit demo: error" in capsys.readouterr().err
