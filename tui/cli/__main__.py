"""`python -m tui.cli`: the same as the `tickscope` command (the demo starts its recording this way)."""

import sys

from tui.cli import main

sys.exit(main())
