"""`pip wheel .` carries the configs, and the installed CLI runs from any directory."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import probe_mp4

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_package_data_and_runs_elsewhere(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True, capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("pavdm-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"orchestrator/configs/default.yaml", "orchestrator/configs/model/gaussian.yaml",
            "orchestrator/configs/model/tiny.yaml", "orchestrator/entry/cli.py", "training/world/scenes.py",
            "orchestrator/models/tiny/README.md", "orchestrator/models/tiny/transformer/config.json",
            "orchestrator/models/tiny/transformer/diffusion_pytorch_model.safetensors"} <= set(names)
    top_level = {name.split("/")[0] for name in names if not name.startswith("pavdm-")}
    assert top_level == {"orchestrator", "actors", "training", "pavdm"}  # no generic names such as configs or models
    assert {"pavdm/__init__.py", "pavdm/py.typed"} <= set(names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    subprocess.run(
        [sys.executable, "-c", "from orchestrator.entry.cli import main; raise SystemExit(main())", "generate",
         "--model", "gaussian", "--quiet", "--seconds", "1", "--out", "v.mp4"],
        check=True, cwd=elsewhere, env=env, capture_output=True,
    )
    assert probe_mp4(elsewhere / "v.mp4")[0] == 8
    where = subprocess.run(
        [sys.executable, "-c", "import orchestrator.configs as c, orchestrator as o; print(o.__file__, c.__file__)"],
        check=True, cwd=elsewhere, env=env, capture_output=True, text=True,
    ).stdout.split()
    assert all(path.startswith(str(site)) for path in where)
