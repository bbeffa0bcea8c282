"""The README's code blocks run as written: each saved as a file, twice in a row.

A block's fence language says what it is, and so whether it runs:

- ``python``: run. Each block is saved as a file in an empty directory and run with this
  interpreter in a subprocess, twice in a row (the second run must succeed over the first's
  outputs: stores and run directories are overwritten); all of them also run together in this
  process, in README order.
- ``bash``: run, in README order, each block saved as a script in an empty directory and run
  by ``bash -eu -o pipefail`` twice in a row, with this environment's ``bin`` first on
  ``PATH``. The first block (install and demo, install and tests) is not run here:
  ``scripts/fresh_check.sh`` runs it in a fresh clone and a fresh venv.
- ``toml``: a file the commands use, named by its first line (``# run.toml``); it is saved
  under that name beside every bash block, and a bash block runs it.
- ``console``: commands that cannot run on one machine (a multi-host Dask cluster with
  placeholder host names, its ``dask scheduler`` and ``dask worker`` daemons); shown, not run.
- ``text``: diagrams and output; not run.

Every block must be self-contained: it makes the stores it reads. A fence without a language,
or with another one, fails :func:`test_readme_fences_are_known`.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
RUN = ("python", "bash")
NOT_RUN = ("toml", "console", "text")
TIMEOUT = 600


def _blocks(language=None):
    """``(line, language, code)`` of the README's fenced blocks, in order."""
    text = README.read_text()
    out = []
    for m in re.finditer(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", text, flags=re.S | re.M):
        line = text.count("\n", 0, m.start()) + 1
        lang = m.group(1).strip()
        if language is None or lang == language:
            out.append((line, lang, m.group(2)))
    return out


def _named_files():
    """The ``toml`` blocks as ``{name: text}``, the name from their first line ``# NAME``."""
    files = {}
    for line, _, code in _blocks("toml"):
        first = code.splitlines()[0] if code else ""
        m = re.fullmatch(r"#\s*(\S+)\s*", first)
        assert m, f"README.md:{line}: a toml block starts with '# FILENAME'"
        files[m.group(1)] = code
    return files


def _env():
    """The running environment's executables first on PATH (``natgrad-stream``, ``python``)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _run_twice(cmd, cwd, what):
    for attempt in ("first", "second"):
        proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True,
                              timeout=TIMEOUT)
        if proc.returncode != 0:
            pytest.fail(f"{what}: {attempt} run exited {proc.returncode}\n"
                        f"--- stdout (tail) ---\n{proc.stdout[-3000:]}\n"
                        f"--- stderr (tail) ---\n{proc.stderr[-5000:]}", pytrace=False)


def test_readme_fences_are_known():
    blocks = _blocks()
    assert blocks
    unknown = [(line, lang) for line, lang, _ in blocks if lang not in RUN + NOT_RUN]
    assert not unknown, (f"README blocks with a fence language other than {RUN + NOT_RUN} "
                         f"(line, language): {unknown}")
    assert _blocks("bash")[0][0] < 12, "the first block is the install + demo + tests block"
    assert "run.toml" in _named_files()


def test_readme_python_examples_run_together(tmp_path, monkeypatch, capsys):
    blocks = _blocks("python")
    assert blocks
    monkeypatch.chdir(tmp_path)
    for line, _, code in blocks:
        exec(compile(code, f"{README}:{line}", "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out
    assert "log_loss" in out


def _block_file(language: str, line: int, tmp_path):
    """The README block of ``language`` at ``line`` saved as a file, and an empty work
    directory to run it in.
    """
    (code,) = [code for at, _, code in _blocks(language) if at == line]
    script = tmp_path / f"readme_line_{line}.{'py' if language == 'python' else 'sh'}"
    script.write_text(code)
    work = tmp_path / "work"
    work.mkdir()
    return script, work


@pytest.mark.slow
@pytest.mark.parametrize("line", [line for line, _, _ in _blocks("python")])
def test_readme_python_block_runs_as_a_file_twice(line, tmp_path):
    script, work = _block_file("python", line, tmp_path)
    _run_twice([sys.executable, str(script)], work, f"README.md:{line} (python)")


@pytest.mark.slow
@pytest.mark.parametrize("line", [line for line, _, _ in _blocks("bash")[1:]])
def test_readme_bash_block_runs_as_a_script_twice(line, tmp_path):
    script, work = _block_file("bash", line, tmp_path)
    for name, text in _named_files().items():
        (work / name).write_text(text)
    _run_twice(["bash", "-eu", "-o", "pipefail", str(script)], work,
               f"README.md:{line} (bash)")


def test_every_named_file_is_used_by_a_bash_block():
    scripts = "\n".join(code for _, _, code in _blocks("bash")[1:])
    for name in _named_files():
        assert name in scripts, f"no README bash block runs {name}"
