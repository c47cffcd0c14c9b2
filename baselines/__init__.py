"""Formula teacher-weighting baselines (AVER, best, random, EBKD, CA-MKD, AEKD, no KD) and
`python -m baselines.compare`, which ranks weighting policies on the same students and seeds.

`baselines.weights` holds the pure tensor functions; `baselines.policies` binds them to an env
with the agents' `predict(obs)` interface.
"""

from .policies import POLICIES, FormulaPolicy, make_policy
from .weights import WEIGHT_FUNCTIONS

__all__ = ["POLICIES", "FormulaPolicy", "make_policy", "WEIGHT_FUNCTIONS"]
