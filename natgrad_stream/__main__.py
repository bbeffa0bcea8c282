"""``python -m natgrad_stream``: the ``natgrad-stream`` command."""

import sys

from natgrad_stream.app.cli import main

sys.exit(main())
