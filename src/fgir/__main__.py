"""`python -m fgir`: the `fgir` command, for an environment without the console script."""

import sys

from fgir.cli import main

sys.exit(main())
