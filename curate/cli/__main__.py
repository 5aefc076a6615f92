"""``python -m curate.cli``: the ``curate`` program."""

import sys

from . import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
