"""``python -m decalign``: the same command line as the ``decalign`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
