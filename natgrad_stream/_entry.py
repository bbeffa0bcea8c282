"""The ``natgrad-stream`` command's entry point (the console script and ``python -m
natgrad_stream``): SIGINT and SIGTERM are handled from its first line, before the command
line's modules load (numpy, numba, zarr: about half a second on a busy machine, during which
SIGTERM used to kill the process with status −15).

Only the interpreter's own start-up, before this module runs, is left to the default
actions.
"""

import signal
import sys

_SIGNALLED = []


def _interrupted(signum, frame):
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt


def forget_keyboard_interrupt() -> None:
    """Clear CPython's record of a KeyboardInterrupt that left a string ``exec``.

    CPython sets its "unhandled KeyboardInterrupt" flag when code run from a string
    (``exec("...")``, as Numba, dataclasses and others generate code) ends in a
    KeyboardInterrupt, even one caught afterwards; under ``python -m`` the interpreter then
    kills itself with SIGINT at exit (status −2) whatever the exit status asked for. Every
    string evaluation starts by clearing the flag: one that ends normally leaves it clear.
    """
    exec("None", {})


def main() -> None:
    """Install the stop handlers, load the command line, run it (exit status: its)."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _interrupted)
    try:
        from natgrad_stream._malloc import keep_freed_buffers

        keep_freed_buffers()
        from natgrad_stream.app.cli import run
    except KeyboardInterrupt:  # a signal while the command line loads: one line, 130
        _stop()
    except ImportError:
        # a library whose import the signal interrupted may report an ImportError instead
        # (numpy: "PyCapsule_Import could not import module ..."): the signal is the cause
        if _SIGNALLED:
            _stop()
        raise
    run()


def _stop() -> None:
    for s in (signal.SIGINT, signal.SIGTERM):  # (not reset to default by the exit)
        signal.signal(s, signal.SIG_IGN)
    print("natgrad-stream: interrupted", file=sys.stderr)
    forget_keyboard_interrupt()
    sys.exit(130)
