"""`python -m rerender ...` (what torchrun -m and the add-on's "Launch Local" use) is the `rerender` command."""

import sys

from . import main

sys.exit(main())
