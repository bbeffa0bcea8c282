"""Compatibility alias: the command line lives in :mod:`natgrad_stream.app.cli`
(``python -m natgrad_stream.cli`` still runs it).
"""

from natgrad_stream.app.cli import build_parser, main, run

__all__ = ["build_parser", "main", "run"]

if __name__ == "__main__":  # pragma: no cover
    run()
