"""`python -m fgir`: the `fgir` command, for environments without its script on PATH."""

import sys

from fgir.cli import main

sys.exit(main())
