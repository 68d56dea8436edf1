"""``python -m decalign``: the same command line as the ``decalign`` script."""

import sys

from .cli import entry

if __name__ == "__main__":
    sys.exit(entry())
