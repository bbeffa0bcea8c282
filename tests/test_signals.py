"""Signals at any moment of a command end it with one line and exit 130 (issue 19: SIGINT
during start-up printed a 29-line KeyboardInterrupt traceback, SIGTERM after the summary
killed the process, status -15).

Each case runs ``python -m natgrad_stream`` in a child process that sends itself the signal
at a chosen point (a hook installed before the command runs), so the moment is exact.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Child program: install the hook named by argv[1], then run the command line as
#: ``python -m natgrad_stream`` does.
CHILD = """
import atexit, os, runpy, signal, sys, time
where, signame = sys.argv[1], sys.argv[2]
sig = getattr(signal, signame)
sys.argv = ["natgrad-stream"] + sys.argv[3:]

def send(*args, **kwargs):
    os.kill(os.getpid(), sig)
    time.sleep(0.2)  # the handler runs here

if where == "import-error":  # a library turns the interrupt into an ImportError (numpy)
    import importlib.abc

    class Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "natgrad_stream.app.cli":
                sys.meta_path.remove(self)
                try:
                    send()
                except KeyboardInterrupt as exc:
                    raise ImportError("PyCapsule_Import could not import module") from exc
            return None

    sys.meta_path.insert(0, Hook())
elif where == "loading":  # the command line's modules loading (before the fit's handler)
    import importlib.abc

    class Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "natgrad_stream.app.cli":
                sys.meta_path.remove(self)
                send()
            return None

    sys.meta_path.insert(0, Hook())
elif where == "start-up":  # before the fit's own handler: imports, zarr's thread pool
    import natgrad_stream.data.zarr_reads as zr
    configure = zr.configure_zarr_threads
    zr.configure_zarr_threads = lambda: (send(), configure())
elif where == "after-summary":  # the summary is on stdout, the command not yet returned
    import natgrad_stream.app.cli as cli
    print_json = cli._print_json
    cli._print_json = lambda obj: (print_json(obj), send())
elif where == "shutdown":  # the command has returned: the interpreter's exit
    import threading
    threading._register_atexit(send)  # (as the thread pools do: before atexit's callbacks)
elif where == "finalization":  # after the atexit callbacks, before the handlers' reset
    atexit.register(send)  # (registered before the command's: the last one to run)
elif where == "teardown":  # the modules' teardown, after the handlers' reset
    class Late:
        def __del__(self):
            send()
    sys.modules["natgrad_late_hook"] = Late()
runpy.run_module("natgrad_stream", run_name="__main__")
"""


def _run(where, signame, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", CHILD, where, signame, *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_signal_during_start_up_is_one_line_and_130(small_zarr, tmp_path, signame):
    code, out, err = _run("start-up", signame, "fit", small_zarr, "--model", "logistic",
                          "--out", tmp_path / "run", "--epochs", 1)
    assert code == 130, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    assert err.startswith("natgrad-stream fit: interrupted")
    assert out == ""


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_signal_while_the_command_line_loads_is_one_line_and_130(small_zarr, tmp_path,
                                                                 signame):
    """The entry point handles the signals from its first line.

    (fuzz: SIGTERM half a second after start, while numpy, numba and zarr loaded, killed
    the process with status −15: no handler was installed yet.)
    """
    for where in ("loading", "import-error"):  # (fuzz: numpy's ImportError, exit 1)
        code, out, err = _run(where, signame, "fit", small_zarr, "--model", "logistic",
                              "--out", tmp_path / "run", "--epochs", 1)
        assert code == 130 and err.strip() == "natgrad-stream: interrupted" and out == "", err


#: ``sitecustomize`` for ``python -m natgrad_stream``: while the command line's modules are
#: found, a SIGINT arrives inside code run from a string (as Numba and dataclasses run the
#: code they generate).
IN_STRING_EXEC = """
import importlib.abc, sys

class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "natgrad_stream.app.cli":
            sys.meta_path.remove(self)
            exec("import os, signal, time; os.kill(os.getpid(), signal.SIGINT); time.sleep(1)")
        return None

sys.meta_path.insert(0, Hook())
"""


def test_a_signal_caught_inside_a_string_exec_still_exits_130(small_zarr, tmp_path):
    """A KeyboardInterrupt caught after it left a string ``exec`` does not turn into −2.

    (fuzz: SIGINT half a second into ``python -m natgrad_stream fit`` printed its one line,
    then the process died with status −2: CPython records a KeyboardInterrupt that leaves a
    string ``exec`` as unhandled, even when caught, and under ``-m`` kills itself with
    SIGINT at exit.)
    """
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(IN_STRING_EXEC)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-m", "natgrad_stream", "fit", str(small_zarr),
                           "--model", "logistic", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "natgrad-stream: interrupted"


@pytest.mark.parametrize("command", ["evaluate", "params"])
def test_signal_during_start_up_of_other_commands(small_zarr, tmp_path, command):
    args = ("params", tmp_path / "none") if command == "params" else \
        ("evaluate", tmp_path / "none", small_zarr)
    code, _, err = _run("start-up", "SIGINT", *args)
    assert code == 130 and err.strip() == f"natgrad-stream {command}: interrupted", err


@pytest.mark.parametrize("where", ["after-summary", "shutdown"])
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_signal_after_the_summary_is_one_line_and_130(small_zarr, tmp_path, where, signame):
    run = tmp_path / "run"
    code, out, err = _run(where, signame, "fit", small_zarr, "--model", "logistic",
                          "--out", run, "--epochs", 1, "--progress", "never")
    assert code == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ": warning: " not in ln]
    assert len(lines) == 1 and "after the" in lines[0], err
    summary = json.loads(out.strip().splitlines()[-1])  # written, and the run with it
    assert summary["samples"] == 5000 and not summary["interrupted"]
    assert (run / "checkpoint.npz").is_file() and (run / "run.json").is_file()


@pytest.mark.parametrize("where", ["finalization", "teardown"])
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_during_the_interpreters_exit_does_not_kill_the_process(small_zarr, tmp_path,
                                                                         signame, where):
    """(fuzz: a second SIGTERM into a stopping fit killed it, status −15: the interpreter's
    finalization had reset the handlers) Once the command is done and its threads joined,
    the signals are blocked: the status is the command's, the output complete.
    """
    code, out, err = _run(where, signame, "fit", small_zarr, "--model", "logistic",
                          "--out", tmp_path / "run", "--epochs", 1, "--progress", "never")
    assert code == 0, err
    assert "Traceback" not in err and json.loads(out.strip().splitlines()[-1])["samples"]


def test_entry_points_run_the_signal_safe_wrapper():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'natgrad-stream = "natgrad_stream._entry:main"' in text
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # main() restores handlers
