"""Every name a user or a file can give stays one path component inside its directory, or is
refused with an :class:`InputError` (exit 2): names on the command line (runs, grids, studies,
datasets), the name in a dataset manifest (and the run, grid and study names made from it),
the dataset a run manifest names, variant names of a variants file, run names in a grid's
``grid.json`` and the keys of a search space (issue 16, "Also"). Drawn by hypothesis."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cml_cli.config import RunConfig
from cml_cli.errors import InputError

NASTY = ["..", ".", "", "/", "a/b", "../x", "/abs", " x", "x ", "x\n", "\0", ".x", ".x.123.abc.tmp", "x" * 256,
         "é" * 120, "[bold]", ":-1:", "~", "-", "--force", "a\\b", "CON", "\u202e"]
names = st.one_of(st.sampled_from(NASTY), st.text(min_size=0, max_size=300),
                  st.text(alphabet=st.sampled_from("./\\ \n\t\0aé~-_:["), max_size=20))
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def stays_inside(base: Path, component: str) -> None:
    """``component`` is one path component of ``base``, and can be created there."""
    assert component not in ("", ".", "..") and "/" not in component and "\0" not in component
    path = base / component
    assert Path(component).parts == (component,) and path.parent == base
    path.mkdir()  # no ENAMETOOLONG, no surprise
    assert path.resolve().parent == base.resolve()
    path.rmdir()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("names")


@SETTINGS
@given(name=names)
def test_cli_names(base, name):
    from cml_cli.data.store import check_name

    try:
        check_name(name, "--name")
    except InputError:
        return
    stays_inside(base, name)


def _write_manifest(ds_dir: Path, source: Path, name: str) -> None:
    manifest = json.loads((source / "manifest.json").read_text())
    manifest["name"] = name
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    manifest["manifest_sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    (ds_dir / "manifest.json").write_text(json.dumps(manifest))


@SETTINGS
@given(name=names)
@example(name="../../x")
def test_dataset_manifest_names_and_the_names_made_from_them(base, data_dir, name):
    from cml_cli.data.store import read_manifest
    from cml_cli.train.loop import default_run_name

    with tempfile.TemporaryDirectory(dir=base) as tmp:
        ds_dir = Path(tmp) / "ds"
        ds_dir.mkdir()
        _write_manifest(ds_dir, data_dir / "synthetic", name)
        try:
            manifest = read_manifest(ds_dir)
        except InputError:
            return
        for made in (manifest["name"], default_run_name(manifest["name"], RunConfig(model="itemknn-merged")),
                     f"ablate-{manifest['name']}", f"tune-{manifest['name']}-lightgcn-merged"):
            stays_inside(Path(tmp), made)


@SETTINGS
@given(name=names)
def test_the_dataset_a_run_manifest_names(base, name):
    from cml_cli.train.rundir import RunDir

    with tempfile.TemporaryDirectory(dir=base) as tmp:
        (Path(tmp) / "manifest.json").write_text(json.dumps({"dataset": name, "dataset_checksum": "ab"}))
        try:
            dataset = RunDir(Path(tmp)).read_manifest()["dataset"]
        except InputError:
            return
        stays_inside(Path(tmp), dataset)


def _toml_string(text: str) -> str:
    """A TOML basic string of ``text`` (JSON's escapes, and DEL escaped as TOML wants)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


@SETTINGS
@given(name=names, seed=st.integers(0, 2**32 - 1))
@example(name="x" * 256, seed=0)
def test_variant_names_of_a_variants_file(base, name, seed):
    from cml_cli.ablate import load_variants_file
    from cml_cli.layout import run_dir_name as dir_name

    with tempfile.TemporaryDirectory(dir=base) as tmp:
        path = Path(tmp) / "v.toml"
        path.write_text(f"[variants.{_toml_string(name)}]\nmodel = \"popularity\"\n")
        try:
            variants = load_variants_file(path)
        except InputError:
            return
        for variant in variants:
            stays_inside(Path(tmp), dir_name(variant, seed))
            stays_inside(Path(tmp), dir_name(variant, seed) + ".log")


@SETTINGS
@given(name=names, seed=st.text(max_size=12))
def test_run_names_in_a_grid_json(base, name, seed):
    from cml_cli.layout import read_grid

    with tempfile.TemporaryDirectory(dir=base) as tmp:
        path = Path(tmp) / "grid.json"
        path.write_text(json.dumps({"variants": {"v": {"runs": {seed: name}}}, "failed": {name: "x"}}))
        try:
            grid = read_grid(path)
        except InputError:
            return
        stays_inside(Path(tmp), grid["variants"]["v"]["runs"][seed])
        assert int(seed) >= 0


@SETTINGS
@given(name=names)
@example(name="model")
@example(name="protocol")
def test_search_space_keys_are_run_options_only(name):
    pytest.importorskip("optuna")
    import dataclasses

    from cml_cli.tune import parse_space

    choice = getattr(RunConfig(), name, 1) if isinstance(name, str) and name.isidentifier() else 1  # a valid value
    try:
        params = parse_space({name: {"type": "categorical", "choices": [choice]}}, "space.toml")
    except InputError:
        return
    assert [p.name for p in params] == [name] and name in {f.name for f in dataclasses.fields(RunConfig)}
    assert name not in ("model", "seed", "protocol")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=names)
@example(name="x" * 256)
@example(name=".synthetic.1.a.tmp")
def test_preprocess_names_on_the_command_line(cml, base, name):
    """End to end: the dataset lands in ``<data-dir>/<name>`` or nothing is written, exit 2."""
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        data = Path(tmp) / "data"
        res = cml("preprocess", "--dataset", "synthetic", "--name", name, "--data-dir", data)
        if res.code == 2:
            assert "Traceback" not in res.stderr and not (data.exists() and any(data.iterdir()))
            return
        assert res.code == 0, res.stderr
        assert [p.name for p in data.iterdir()] == [name] and (data / name / "manifest.json").is_file()
        assert not name.startswith(".")  # the next `cml datasets` would take it for a stale temporary
        shutil.rmtree(data)
