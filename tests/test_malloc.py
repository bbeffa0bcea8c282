"""The command's allocator setting (``natgrad_stream._malloc``): freed buffers are reused."""

import subprocess
import sys

import pytest

from natgrad_stream import _malloc

_FAULTS = r"""
import resource, sys
import numpy as np
if sys.argv[1] == "1":
    from natgrad_stream._malloc import keep_freed_buffers
    assert keep_freed_buffers()
phi = np.ones(100_001)
keep = []
def step():  # a wide model's step: two arrays of P floats, the state keeps the last pairs
    global keep
    pair = (np.empty_like(phi), np.empty_like(phi))
    pair[0][:] = 1.0
    pair[1][:] = 2.0
    keep = (keep + [pair])[-3:]
for _ in range(5):  # warm: the heap reaches its working size
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(300):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(setting: bool) -> int:
    out = subprocess.run([sys.executable, "-c", _FAULTS, "1" if setting else "0"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def _glibc() -> bool:
    import ctypes

    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
        return True
    except (OSError, AttributeError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc(),
                    reason="glibc's mallopt")
def test_freed_arrays_of_a_wide_step_are_reused_not_faulted_in_again():
    default, kept = _faults(False), _faults(True)
    # a new array faults in its 196 pages on first touch (600 arrays here)
    assert kept < 2_000 < default


def test_the_command_sets_it_before_loading_its_modules(monkeypatch):
    import signal

    from natgrad_stream import _entry

    calls = []
    monkeypatch.setattr(_malloc, "keep_freed_buffers", lambda: calls.append(1) or True)
    monkeypatch.setattr("natgrad_stream.app.cli.run", lambda: None)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        _entry.main()
    finally:  # (main installs the command's stop handlers)
        for s, h in handlers.items():
            signal.signal(s, h)
    assert calls == [1]
