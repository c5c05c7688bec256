"""``cml ablate`` with one failing run: the others complete, the table marks the failed one,
the command exits 1 and says which run failed and where its log is."""

from __future__ import annotations

import json

import pytest


def _ablate_available() -> str | None:
    try:
        import cml_cli.ablate  # noqa: F401
        from cml_cli.cli import app
    except ImportError as e:
        return f"cml_cli.ablate is not there yet ({e})"
    names = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    if "ablate" not in names:
        return "the `cml ablate` command is not registered yet"
    return None


@pytest.mark.skipif(_ablate_available() is not None, reason=str(_ablate_available()))
def test_one_failing_run_others_complete(children, data_dir, tmp_path):
    variants = tmp_path / "variants.toml"
    variants.write_text('[variants.diverge]\nlr = 1e30\nmax_lr = 1e30\ndescription = "loss overflows"\n')
    runs = tmp_path / "runs"
    child = children.run(["ablate", "-d", "synthetic", "--data-dir", data_dir, "--runs-dir", runs, "--name", "g",
                          "--variants", "cml,diverge", "--variants-file", variants, "--seeds", "0",
                          "--set", "epochs=1", "--set", "batch=256", "--set", "device=cpu"])
    grid = runs / "g"
    msg = " ".join(child.stderr.split())
    assert child.exitcode == 1, child.stderr
    assert "Traceback" not in child.stderr
    assert "1 run(s) failed" in msg and "diverge-s0" in msg and str(grid / "diverge-s0.log") in msg, msg
    log = (grid / "diverge-s0.log").read_text()
    assert "epoch 1, batch" in log and ("nan" in log or "inf" in log)
    assert (grid / "cml-s0" / "metrics.json").is_file()  # the good run completed
    assert not (grid / "diverge-s0" / "metrics.json").exists()
    table = json.loads((grid / "table.json").read_text())
    status = {r["variant"]: r["status"] for r in table["rows"]}
    assert status == {"cml": "ok", "diverge": "failed"}, status
