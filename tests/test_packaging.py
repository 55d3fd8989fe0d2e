"""Regular and editable installs expose agents/, envs/, wrappers/ only as fst_env sub-packages."""

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

IMPORT_CHECK = (
    "import importlib.util, sys, fst_env, fst_env.agents, fst_env.envs, fst_env.wrappers\n"
    "for name in ('agents', 'envs', 'wrappers'):\n"
    "    assert importlib.util.find_spec(name) is None, f'top-level {name} is importable'\n"
    "assert 'torch' not in sys.modules, 'import fst_env must not import torch'\n"
    "assert 'fst/MathReasoning-v0' in fst_env.registered_ids()\n"
    "print(fst_env.agents.__file__)\n"
)


def test_current_install_imports_cleanly(tmp_path):
    out = subprocess.run([sys.executable, "-c", IMPORT_CHECK], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_wheel_layout_and_regular_install(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("fst_env-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.startswith("fst_env-")}
    assert tops == {"fst_env"}, tops
    for sub in ("agents", "envs", "wrappers"):
        assert any(n.startswith(f"fst_env/{sub}/") for n in names), sub
    source_packages = {init.parent.relative_to(ROOT) for top in ("fst_env", "agents", "envs", "wrappers")
                       for init in (ROOT / top).rglob("__init__.py")}
    for package in source_packages:
        installed = package if package.parts[0] == "fst_env" else Path("fst_env", *package.parts)
        assert f"{installed.as_posix()}/__init__.py" in names, f"{package} is missing from the wheel"
    # A regular (non-editable) install into a fresh venv that reuses this interpreter's dependencies.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   timeout=300)
    out = subprocess.run([str(python), "-c", IMPORT_CHECK], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert str(env_dir) in out.stdout, f"imported {out.stdout.strip()} instead of the wheel's copy"


def test_editable_install_points_at_the_checkout(tmp_path):
    out = subprocess.run([sys.executable, "-c", IMPORT_CHECK], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    location = Path(out.stdout.strip())
    if ROOT not in location.parents:
        pytest.skip(f"fst_env is not installed editable from this checkout ({location})")
    assert location == ROOT / "agents" / "__init__.py"
