"""``python -m natgrad_stream``: the ``natgrad-stream`` command."""

from natgrad_stream._entry import main

main()
