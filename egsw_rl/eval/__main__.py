"""`python -m egsw_rl.eval ...`: the command line is `egsw_rl.eval.cli`."""

import sys

from egsw_rl.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())
