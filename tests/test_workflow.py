"""`strainkit run CONFIG.toml`: the configuration, its errors, and the run itself."""

import numpy as np
import pytest

import strainkit as sk
from strainkit import cli, simulate
from strainkit.demo import run_demo
from strainkit.workflow import (
    Config,
    ConfigError,
    config_template,
    format_report,
    load_config,
    run_config,
)

FIELDS = ("exx", "eyy", "exy", "theta_deg", "sigma_exx", "a", "mask")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The small demo (data, its strainkit.toml and its own results), run once."""
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, scan=8, calibration_scan=16, progress=False)


@pytest.fixture(scope="module")
def run(demo):
    """`run_config` on the configuration the demo wrote (results in <demo>/run)."""
    out, _ = demo
    return run_config(out / "strainkit.toml", progress=False, n_jobs=1)


@pytest.fixture(scope="module")
def second_scan(tmp_path_factory):
    """Another experimental scan (other seed, 6 x 8 positions), same microscope."""
    folder = tmp_path_factory.mktemp("second")
    paths = simulate.write_demo(
        folder,
        seed=3,
        vacuum_shape=(1, 1),
        calibration_shape=(1, 1),
        image_shape=(48, 48),
        n_features=2,
        experiment_shape=(6, 8),
    )
    return paths["experiment"]


def _minimal(**changes) -> dict:
    data = {
        "vacuum": {"path": "vacuum.h5"},
        "calibration": {"path": "calibration.h5", "standard": "fcc", "a": 4.078},
        "images": {"path": "images.h5", "haadf": "haadf", "shadow": "shadow"},
        "experiment": [{"path": "experiment.h5"}],
        "reference": {"rows": [0, 2]},
    }
    for table, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(table), dict):
            data[table] = {**data[table], **value}
        else:
            data[table] = value
    return data


def _error(data: dict, base=None) -> str:
    with pytest.raises(ConfigError) as info:
        Config.from_dict(data, base=base)
    return str(info.value)


def _assert_same_map(a, b) -> None:
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


# ---- the run ----------------------------------------------------------------------------


def test_run_writes_every_file_and_equals_the_demo(demo, run):
    out, demo_result = demo
    folder = out / "run"
    assert run["output_dir"] == folder
    for name in (
        "experiment_strain.h5",
        "experiment_strain.png",
        "pipeline.h5",
        "qc_origin.png",
        "qc_bvm.png",
        "qc_rotation.png",
        "report.txt",
    ):
        assert (folder / name).stat().st_size > 0, name
    assert set(run["paths"].values()) == set(folder.iterdir())  # no stray temporary files
    # the same files measured the same way as the demo: the same map, bit for bit
    strain = run["strain_maps"]["experiment_strain"]
    _assert_same_map(strain, demo_result["strain_map"])
    _assert_same_map(sk.load_model(folder / "experiment_strain.h5"), strain)
    again = sk.load_model(folder / "pipeline.h5").transform(sk.read(out / "experiment.h5"))
    _assert_same_map(again, strain)
    # the report holds every calibration, as measured by the demo too
    measured = {name: value for name, value, _, _ in run["calibrations"]}
    demo_rows = {name: value for name, value, _, _ in demo_result["calibrations"]}
    for name in ("pixel size", "ellipse a/b", "ellipse angle", "flip"):
        assert measured[name] == demo_rows[name], name
    assert measured["rotation"] == pytest.approx(demo_rows["rotation"], abs=1e-9)
    assert measured["probe radius"] == pytest.approx(6.0, abs=0.2)
    assert run["scans"] == [("experiment_strain", 64, 64, 16)]
    report = (folder / "report.txt").read_text(encoding="utf-8")
    assert report == format_report(run)
    assert "pixel size" in report and "strain pipeline (experiment)" in report
    assert str(out / "calibration.h5") in report


def test_two_scans_each_against_its_own_reference(demo, second_scan, tmp_path, monkeypatch):
    out, demo_result = demo
    monkeypatch.chdir(tmp_path)  # relative paths follow the configuration file, not the cwd
    config = tmp_path / "cfg" / "two.toml"
    config.parent.mkdir()
    rel = f"../../{out.name}"  # the demo folder, relative to the configuration's folder
    config.write_text(
        config_template(reference_rows=(0, 2), output_dir="results")
        .replace('"vacuum.h5"', f'"{(out / "vacuum.h5").as_posix()}"')  # absolute
        .replace('"calibration.h5"', f'"{rel}/calibration.h5"')
        .replace('"images.h5"', f'"{rel}/images.h5"')
        .replace('"experiment.h5"', f'"{rel}/experiment.h5"')
        + f'\n[[experiment]]\npath = "{second_scan.as_posix()}"\nname = "second"\n',
        encoding="utf-8",
    )
    cfg = load_config(config)
    assert cfg.calibration.path == out / "calibration.h5"
    assert cfg.output_dir == config.parent / "results"
    result = run_config(cfg, progress=False, n_jobs=2)
    folder = config.parent / "results"
    assert (folder / "second_strain.h5").exists() and (folder / "second_strain.png").exists()
    assert result["scans"] == [("experiment_strain", 64, 64, 16), ("second_strain", 48, 48, 16)]
    maps = result["strain_maps"]
    # the first scan is unaffected by the second
    _assert_same_map(maps["experiment_strain"], demo_result["strain_map"])
    # the second scan equals the pipeline refitted on it by hand, against its own rows
    pipe = sk.load_model(folder / "pipeline.h5")
    mask = np.zeros((6, 8), bool)
    mask[:2] = True
    by_hand = pipe.set_params(strain__reference=mask).fit_transform(sk.read(second_scan))
    _assert_same_map(maps["second_strain"], by_hand)
    # ... and is right: against the simulation's truth
    truth = simulate.read_truth(second_scan)
    for name in ("exx", "eyy", "exy"):
        error = getattr(maps["second_strain"], name) - truth[name]
        assert np.sqrt(np.nanmean(error**2)) < 1e-3, name  # < 0.1 % strain


def test_cli_run_prints_a_summary_and_the_paths(demo, tmp_path, capsys):
    out, _ = demo
    config = out / "cli.toml"
    text = (out / "strainkit.toml").read_text(encoding="utf-8")
    config.write_text(text.replace('dir = "run"', f'dir = "{tmp_path.as_posix()}"'))
    assert cli.main(["run", str(config), "--quiet", "--jobs", "1"]) == 0
    printed = capsys.readouterr()
    assert "pixel size" in printed.out and "rotation" in printed.out
    assert str(tmp_path / "experiment_strain.h5") in printed.out
    assert printed.err == ""  # --quiet: no progress bars
    assert (tmp_path / "report.txt").exists()


def test_cli_run_template_is_a_valid_configuration(tmp_path, capsys):
    assert cli.main(["run", "--template"]) == 0
    text = capsys.readouterr().out
    assert text == config_template()
    path = tmp_path / "strainkit.toml"
    path.write_text(text, encoding="utf-8")
    cfg = load_config(path)
    assert cfg.reference.rows == (0, 16) and cfg.calibration.standard == "fcc"
    assert cfg.images.files()["shadow"] == ("path", tmp_path / "images.h5", "shadow")
    assert cfg.output_dir == tmp_path  # default: beside the (first) experimental scan


def test_cli_run_reports_errors(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(config_template().replace("standard =", "standrad ="), encoding="utf-8")
    assert cli.main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("strainkit run: error:")
    assert "[calibration] unknown key 'standrad'" in err and "standard" in err
    assert cli.main(["run"]) == 1
    assert "--template" in capsys.readouterr().err
    assert cli.main(["run", str(tmp_path / "none.toml")]) == 1
    assert "no such configuration file" in capsys.readouterr().err


# ---- configuration errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"calibration": {"standrad": "fcc"}},
            "[calibration] unknown key 'standrad'; allowed: path, dataset, standard, a, c,",
        ),
        (
            {"experiment": [{"path": "e.h5", "pathh": "x"}]},
            "[[experiment]] #1 unknown key 'pathh'; allowed: path, dataset, name",
        ),
        ({"calibrations": {}}, "unknown table [calibrations]; allowed: [vacuum], [calibration]"),
        ({"finder": {"radius": 3}}, "[finder] unknown key 'radius' for BraggDiskFinder; allowed:"),
        ({"output": {"threads": 2}}, "[output] unknown key 'threads'; allowed: dir, n_jobs,"),
        ({"finder": {"n_jobs": 4}}, "[finder] 'n_jobs' is set by the workflow, not here; use"),
        ({"strain": {"reference": 1}}, "[strain] 'reference' is set by the workflow, not here"),
    ],
)
def test_unknown_key_names_the_key_and_the_allowed_ones(changes, expected):
    assert expected in _error(_minimal(**changes))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"calibration": {"a": "gold"}},
            "[calibration] a = 'gold': Input should be a valid number",
        ),
        (
            {"calibration": {"standard": "fcx"}},
            "[calibration] standard = 'fcx': Input should be 'fcc', 'bcc', 'diamond', 'cubic' or",
        ),
        ({"calibration": {"standard": "hcp"}}, "[calibration] standard = 'hcp' needs both"),
        ({"reference": {"rows": [3, 1]}}, "[reference] rows = [3, 1]: each range start must"),
        ({"reference": {"rows": [-1, 2]}}, "[reference] rows[0] = -1: Input should be greater"),
        ({"reference": {"region": [0, 1, 0, 1]}}, "give exactly one of rows"),
        ({"lattice": {"min_peaks": 2}}, "[lattice] LatticeFitter: min_peaks = 2: Input should be"),
        ({"output": {"n_jobs": 0}}, "[output] n_jobs = 0: n_jobs must be a positive number"),
        ({"vacuum": "vacuum.h5"}, "[vacuum] must be a table of keys, got 'vacuum.h5'"),
        ({"experiment": {"path": "e.h5"}}, "experiment must be written [[experiment]]"),
        ({"images": {"path": 3}}, "[images] path = 3: Input is not a valid path"),
    ],
)
def test_a_wrong_value_names_the_key_the_value_and_what_is_allowed(changes, expected):
    assert expected in _error(_minimal(**changes))


def test_a_missing_table_or_key_is_named():
    data = _minimal()
    del data["vacuum"], data["experiment"], data["calibration"]["path"]
    message = _error(data)
    assert "missing table [vacuum]" in message
    assert "missing [[experiment]]" in message
    assert "[calibration] missing key 'path'" in message
    assert "[images]" not in message  # only the problems are listed


def test_each_problem_is_listed_and_pydantic_text_is_not():
    message = _error(_minimal(calibration={"a": -1.0}, reference={"rows": [0, 2, 4]}))
    lines = message.splitlines()
    assert len(lines) == 2 and lines[0].startswith("[calibration] a = -1.0")
    assert "validation error" not in message and "errors.pydantic.dev" not in message


def test_two_scans_writing_the_same_files_are_refused():
    data = _minimal(experiment=[{"path": "a/scan.h5"}, {"path": "b/scan.h5"}])
    assert "#1 and #2 would both write scan_strain.h5" in _error(data)
    ok = _minimal(experiment=[{"path": "a/scan.h5"}, {"path": "b/scan.h5", "name": "b"}])
    assert [e.stem for e in Config.from_dict(ok).experiment] == ["scan", "b"]


def test_relative_paths_follow_the_configuration_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "session" / "configs"
    folder.mkdir(parents=True)
    (folder / "a.toml").write_text(
        config_template()
        .replace('"experiment.h5"', '"../scans/exp1.h5"')
        .replace('"vacuum.h5"', '"~/vacuum.h5"'),
        encoding="utf-8",
    )
    cfg = load_config("session/configs/a.toml")  # relative to the cwd, itself
    assert cfg.experiment[0].path == tmp_path / "session" / "scans" / "exp1.h5"
    assert cfg.images.path == folder / "images.h5"
    assert cfg.vacuum.path.is_absolute() and "~" not in str(cfg.vacuum.path)
    assert cfg.output_dir == tmp_path / "session" / "scans"
    assert Config.from_dict(_minimal(), base="/data").vacuum.path.as_posix() == "/data/vacuum.h5"


def test_the_example_and_the_readme_configurations_are_valid(tmp_path):
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    example = load_config(root / "examples" / "strainkit.toml")
    assert example.vacuum.path == root / "examples" / "vacuum.h5"
    readme = (root / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Running on your own data") :]
    (tmp_path / "readme.toml").write_text(
        re.search(r"```toml\n(.*?)```", section, re.S).group(1), encoding="utf-8"
    )
    cfg = load_config(tmp_path / "readme.toml")
    assert [e.stem for e in cfg.experiment] == ["scan1", "scan2"]
    assert cfg.lattice == {"min_peaks": 8} and cfg.output_dir == tmp_path / "results"


def test_invalid_toml_is_a_config_error(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[vacuum\npath = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(path)


# ---- checks on the files, before anything runs --------------------------------------------


def test_missing_files_are_named_with_their_key_and_resolved_path(tmp_path):
    data = _minimal(
        vacuum={"path": "raw/vac.h5"}, experiment=[{"path": "e1.h5"}, {"path": "sub/e2.h5"}]
    )
    data["output"] = {"dir": "results"}
    cfg = Config.from_dict(data, base=tmp_path)
    with pytest.raises(ConfigError) as info:
        run_config(cfg, progress=False)
    message = str(info.value)
    assert f"[vacuum] path: no such file {str(tmp_path / 'raw' / 'vac.h5')!r}" in message
    assert f"[[experiment]] #2 path: no such file {str(tmp_path / 'sub' / 'e2.h5')!r}" in message
    assert len(message.splitlines()) == 5  # vacuum, calibration, images, e1, e2: all of them
    assert not (tmp_path / "results").exists()  # nothing created, nothing written


def test_files_are_checked_against_each_other_before_anything_runs(demo, tmp_path):
    out, _ = demo
    mask = tmp_path / "mask.npy"
    np.save(mask, np.ones((3, 3), bool))
    data = _minimal(
        vacuum={"dataset": "nothing/here"},
        reference={"rows": None, "mask": str(mask)},
        output={"dir": str(tmp_path / "results")},
    )
    cfg = Config.from_dict(data, base=out)
    with pytest.raises(ConfigError) as info:
        run_config(cfg, progress=False)
    message = str(info.value)
    assert "[vacuum]: " in message and "no dataset 'nothing/here'" in message
    assert "[reference] mask has shape (3, 3) but the scan has (8, 8) positions" in message
    assert not (tmp_path / "results").exists()

    cfg = Config.from_dict(_minimal(reference={"rows": [0, 50]}), base=out)
    with pytest.raises(ConfigError, match=r"rows = \[0, 50\] lies outside the scan of 8 x 8"):
        run_config(cfg, progress=False)


def test_a_mask_must_be_boolean(demo, tmp_path):
    out, _ = demo
    mask = tmp_path / "mask.npy"
    np.save(mask, np.full((8, 8), 0.5))
    cfg = Config.from_dict(_minimal(reference={"rows": None, "mask": str(mask)}), base=out)
    with pytest.raises(ConfigError, match="is not a boolean mask"):
        run_config(cfg, progress=False)
