"""natgrad_stream: natural-gradient learning on data streams too large for memory."""

__version__ = "0.1.0"

# A library logs and the application decides where its records go. No handler is added
# here (not even a NullHandler): until the application configures logging, Python's
# last-resort handler prints WARNING and above on stderr, so a fit that ends not converged
# or unidentified still says so in one line, while the progress records (INFO, DEBUG) stay
# silent; logging.basicConfig(level=logging.INFO) shows them.
