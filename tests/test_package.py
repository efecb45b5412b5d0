"""Installable: a wheel built from the checkout, installed into a fresh virtual environment, gives a `resnet-lab`
command equal to `python -m resnet_lab`, works from another folder and carries the shipped assets."""

from __future__ import annotations

import site
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_wheel_installs_into_a_fresh_venv_and_runs_from_anywhere(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(wheels.glob("resnet_lab-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)  # this environment's pip installs into it (`--python`): no ensurepip
    bin_dir = env_dir / "bin"
    # the dependencies (torch, timm, ...) come from this environment through a .pth file: the fresh venv gets
    # only our wheel installed, which is what is being tested
    purelib = subprocess.run([bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install", "--no-deps",
                    "--no-index", "-q", str(wheel)], check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}

    def run(*cmd: str) -> str:
        p = subprocess.run(cmd, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
        return p.stdout

    helped = run("resnet-lab", "--help")
    assert "verify" in helped and "curvature" in helped
    assert helped == run(str(bin_dir / "python"), "-m", "resnet_lab", "--help")  # one command, two names
    assert "resnet18" in run("resnet-lab", "verify", "--arch", "resnet18")
    where = run(str(bin_dir / "python"), "-c", "import resnet_lab, resnet_lab.paths as p; "
                "print(resnet_lab.__file__); print(p.ASSETS); print((p.ASSETS / 'twins').is_dir())").split()
    assert str(env_dir) in where[0] and str(env_dir) in where[1] and where[2] == "True"  # not the checkout's
