"""A non-editable install works from an unrelated folder: the wheel carries the embedded models and the shipped
configs, and ``mmalign --help``, ``reno``, ``mmalign demo`` and a short training run succeed from a folder that
has no ``assets/`` or ``configs/``.

The wheel is built from this checkout and installed (``--no-deps``) into a fresh venv that sees this
environment's third-party packages but not its editable install of the suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def sh(cmd: list[str], cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


@pytest.mark.slow
def test_wheel_install_runs_from_an_unrelated_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    dist = tmp_path / "dist"
    sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)],
       tmp_path, env)
    wheel = next(dist.glob("mmalign-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "mmalign/assets/shapesworld-t2i/model_index.json" in names
    assert "mmalign/assets/shapesworld-clip/open_clip_config.json" in names
    assert "mmalign/configs/d3po_shapes.yaml" in names and "mmreward/shapes/suites/eval.jsonl" in names
    assert "diffusion_align/label_page.html" in names  # the labelling page
    assert "mmreward/vlm/templates.json" in names  # the VLM judge templates

    venv = tmp_path / "venv"
    sh([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    site = next((venv / "lib").glob("python3*/site-packages"))
    # third-party packages of this environment (torch, diffusers...), read as a plain path: its .pth files,
    # the editable install of this checkout among them, are not processed
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    bin_ = venv / "bin"
    sh([str(bin_ / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp_path, env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = sh([str(bin_ / "python"), "-c", "import mmreward, mmalign.cli; print(mmreward.__file__)"], elsewhere, env)
    assert where.stdout.strip().startswith(str(site)), where.stdout  # the installed copy, not this checkout
    env["PATH"] = f"{bin_}{os.pathsep}{env['PATH']}"

    assert "train-reward" in sh(["mmalign", "--help"], elsewhere, env).stdout
    sh(["reno", "--prompt", "a photo of a red star", "--out", "out/", "--no-progress"], elsewhere, env)
    summary = json.loads((elsewhere / "out" / "summary.json").read_text())
    assert summary["images"] == 1 and (elsewhere / "out" / "grid.png").is_file()
    sh(["mmalign", "demo"], elsewhere, env)
    assert json.loads((elsewhere / "outputs" / "demo" / "samples.json").read_text())["rows"]
    sh(["mmalign", "train", "--config", "drakes_dna", "--set", "num_epochs=2", "--set", "batch_size=4",
        "--set", "num_accum_steps=1", "--set", "sample_steps=16", "--set", "truncate_steps=4",
        "--set", "output_dir=runs/drakes", "--no-progress"], elsewhere, env)
    assert len((elsewhere / "runs" / "drakes" / "metrics.jsonl").read_text().splitlines()) == 2


def test_the_package_data_covers_every_asset_and_config(monkeypatch):
    """What the wheel carries: every file under ``assets/`` and ``configs/`` matches the package-data globs
    of ``setup.py`` (the slow test above checks a built wheel)."""
    import fnmatch

    import setuptools

    seen = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: seen.update(kw))
    monkeypatch.chdir(ROOT)
    exec(compile((ROOT / "setup.py").read_text(), "setup.py", "exec"), {"__name__": "__main__"})
    assert {"mmalign", "mmalign.assets", "mmalign.configs", "mmreward", "diffusion_align", "vlm_rl"} <= set(seen["packages"])
    for package, folder in seen["package_dir"].items():
        files = [p.relative_to(ROOT / folder).as_posix() for p in (ROOT / folder).rglob("*") if p.is_file()]
        globs = seen["package_data"][package]
        assert files and all(any(fnmatch.fnmatch(f, g) or g == "**/*" for g in globs) for f in files), package
