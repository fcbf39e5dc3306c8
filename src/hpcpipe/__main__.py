"""``python -m hpcpipe`` is the ``hpcpipe`` command."""

import sys

from hpcpipe.cli import main

sys.exit(main())
