"""Entry point: ``python -m pipesim {run,model,schedule} ...``."""
import sys

from pipesim.cli import main

sys.exit(main())
