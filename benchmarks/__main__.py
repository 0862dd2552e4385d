"""`python -m benchmarks ...` is `parrot-gateway bench ...`."""

import sys

from .cli import main

sys.exit(main())
