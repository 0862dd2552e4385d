"""Entry point of ``python -m backends.sim.calibrate``."""

from .cli import main

raise SystemExit(main())
