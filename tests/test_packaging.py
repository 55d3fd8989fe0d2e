"""Regular and editable installs expose agents/, envs/, wrappers/ only as fst_env sub-packages."""

import site
import subprocess
import sys
import sysconfig
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


def _site_dirs() -> list[str]:
    """The running interpreter's site-packages directories (its venv's, not the base interpreter's)."""
    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


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
    # A regular (non-editable) install into a fresh venv that reuses the *running* interpreter's dependencies:
    # no system site packages (those are the base interpreter's, not this venv's), a .pth naming this
    # interpreter's site dirs instead. Plain path lines: the .pth files in those dirs (this checkout's editable
    # install among them) are not processed, so fst_env can only come from the wheel.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=False, with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    own_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    Path(own_site, "_fst_test_parent_env.pth").write_text("\n".join(_site_dirs()) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   timeout=300)
    out = subprocess.run([str(python), "-c", IMPORT_CHECK], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert str(env_dir) in out.stdout, f"imported {out.stdout.strip()} instead of the wheel's copy"
    # The base interpreter's own packages stay out unless the running interpreter itself uses them.
    base = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})["purelib"]
    seen = subprocess.run([str(python), "-c", "import sys; print('\\n'.join(sys.path))"], check=True,
                          capture_output=True, text=True, timeout=60).stdout.splitlines()
    assert base not in seen or base in _site_dirs(), f"the test venv sees the base interpreter's {base}"


def test_editable_install_points_at_the_checkout(tmp_path):
    out = subprocess.run([sys.executable, "-c", IMPORT_CHECK], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    location = Path(out.stdout.strip())
    if ROOT not in location.parents:
        pytest.skip(f"fst_env is not installed editable from this checkout ({location})")
    assert location == ROOT / "agents" / "__init__.py"
