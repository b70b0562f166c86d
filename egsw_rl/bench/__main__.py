"""`python -m egsw_rl.bench ...`: the command line is `egsw_rl.bench.cli`."""

import sys

from egsw_rl.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
