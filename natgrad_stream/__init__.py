"""natgrad_stream: natural-gradient learning on data streams too large for memory."""

__version__ = "0.1.0"

import logging as _logging

# a library logs and the application decides where its records go: silent by default,
# visible with e.g. logging.basicConfig(level=logging.INFO)
_logging.getLogger("natgrad_stream").addHandler(_logging.NullHandler())
