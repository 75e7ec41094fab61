"""``python -m optimum_binarymos <command>``: see :mod:`optimum_binarymos.cli`."""

import sys

from .cli import main

sys.exit(main())
