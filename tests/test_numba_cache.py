"""A package directory nobody may write (a system-wide install) still runs (issue 19: every
command died with ``cannot cache function 'gather_rows': no locator available``).

The command-line cases copy the package into a read-only directory and run it with a
read-only home. As root, file modes do not restrict, so the child runs without the
capabilities that bypass them (``setpriv``); elsewhere plain modes suffice.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numba
import pytest

from natgrad_stream import _jit

ROOT = Path(__file__).resolve().parents[1]


# -- the choice, unit by unit -----------------------------------------------------------
def _package(tmp_path, writable: bool) -> Path:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("")
    (pkg / "sub" / "b.py").write_text("")
    if not writable:  # a regular file where __pycache__ would go: nothing can be made there
        (pkg / "sub" / "__pycache__").write_text("")
    return pkg


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """Numba's own places unwritable: no NUMBA_CACHE_DIR, a user cache under a file."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    monkeypatch.setattr(_jit, "_numba_user_cache", lambda: blocker / "numba")
    return blocker


def test_numba_s_own_choice_is_kept_when_the_package_is_writable(tmp_path, nowhere):
    assert _jit.cache_directory(_package(tmp_path, True)) == (True, None)


def test_read_only_package_and_home_fall_back_to_a_private_temp_directory(
        tmp_path, nowhere, monkeypatch):
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    cache, directory = _jit.cache_directory(_package(tmp_path, False))
    assert cache and Path(directory).parent == temp
    assert (Path(directory).stat().st_mode & 0o777) == 0o700


def test_a_shared_temp_directory_is_never_used(tmp_path, nowhere, monkeypatch):
    temp = tmp_path / "tmp"
    (temp / f"natgrad_stream-numba-{os.getuid()}").mkdir(parents=True, mode=0o777)
    os.chmod(temp / f"natgrad_stream-numba-{os.getuid()}", 0o777)
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    assert _jit.cache_directory(_package(tmp_path, False)) == (False, None)


def test_nothing_writable_means_no_cache(tmp_path, nowhere, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(nowhere / "tmp"))
    assert _jit.cache_directory(_package(tmp_path, False)) == (False, None)


def test_user_cache_dir_is_honoured(tmp_path, nowhere, monkeypatch):
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path / "mine"))
    assert _jit.cache_directory(_package(tmp_path, False)) == (True, None)


# -- the command line, installed read-only ------------------------------------------------
def _unprivileged() -> list[str]:
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root without setpriv: file modes cannot be enforced")
    return ["setpriv", "--inh-caps=-all",
            "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


@pytest.fixture
def read_only_install(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(ROOT / "natgrad_stream", site / "natgrad_stream",
                    ignore=shutil.ignore_patterns("__pycache__"))
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "tmp").mkdir()
    for path in [home, site, *site.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    yield site, home
    for path in [home, site, *site.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)


def _run(read_only_install, tmp_path, *args):
    site, home = read_only_install
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_CACHE", "XDG_"))}
    env.update(HOME=str(home), PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1",
               TMPDIR=str(tmp_path / "tmp"))
    proc = subprocess.run([*_unprivileged(), sys.executable, "-m", "natgrad_stream",
                           *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_read_only_install_runs_commands_without_a_traceback(read_only_install, tmp_path):
    code, out, err = _run(read_only_install, tmp_path, "--help")
    assert code == 0 and "fit" in out and err == ""
    # importing the kernels is what failed: a fit that stops at its data does so cleanly
    code, _, err = _run(read_only_install, tmp_path, "fit", tmp_path / "missing.zarr",
                        "--model", "logistic", "--out", tmp_path / "run")
    assert code == 2 and "Traceback" not in err and "locator" not in err, err
    assert err.startswith("natgrad-stream fit: error:") and err.count("\n") == 1, err


@pytest.mark.slow
def test_read_only_install_fits_and_caches(read_only_install, tmp_path, small_zarr):
    for _ in range(2):  # compiles into the private cache, then loads from it
        code, out, err = _run(read_only_install, tmp_path, "fit", small_zarr, "--model",
                              "logistic", "--out", tmp_path / "run", "--epochs", 1,
                              "--overwrite", "--progress", "never")
        assert code == 0 and "Traceback" not in err, err
    cached = tmp_path / "tmp" / f"natgrad_stream-numba-{os.getuid()}"
    assert any(cached.rglob("*.nbi"))
