"""`python -m kgen` is the `kgen` command."""

import sys

from kgen.cli import main

sys.exit(main())
