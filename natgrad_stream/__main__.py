"""``python -m natgrad_stream``: the ``natgrad-stream`` command."""

import sys

try:
    from natgrad_stream.app.cli import run
except KeyboardInterrupt:  # a signal while the command line loads: one line, no traceback
    print("natgrad-stream: interrupted", file=sys.stderr)
    sys.exit(130)

run()
