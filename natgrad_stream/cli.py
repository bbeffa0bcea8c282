"""Compatibility alias: the command line lives in :mod:`natgrad_stream.app.cli`
(``python -m natgrad_stream.cli`` still runs it).
"""

import sys

from natgrad_stream.app.cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
