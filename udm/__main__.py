"""``python -m udm ...`` (and ``torchrun -m udm run EXP.yaml``) runs the ``udm`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
