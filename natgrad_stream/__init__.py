"""natgrad_stream: natural-gradient learning on data streams too large for memory."""

__version__ = "0.1.0"
