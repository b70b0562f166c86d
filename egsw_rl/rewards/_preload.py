"""Imported once by the pool's forkserver: load math-verify / SymPy / the ANTLR parser and compile
the extraction regexes, so every forked reward worker starts warm."""

from egsw_rl.rewards.grading import grade
from egsw_rl.rewards.types import RewardOptions

_opts = RewardOptions(extraction="boxed_then_any")
grade("so $x = \\boxed{\\frac{1}{2}}$", "\\frac{1}{2}", _opts)
grade("The final answer is $\\frac{1}{2}$ and 3", "3", _opts)
del _opts
