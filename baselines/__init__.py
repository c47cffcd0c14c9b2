"""Teacher-weighting baselines of the KD literature — formulas (AVER, best, random, EBKD, CA-MKD,
AEKD, no KD) and MMKD, which meta-learns its weights online within each episode — and
`python -m baselines.compare`, which ranks weighting policies on the same students and seeds.

`baselines.weights` holds the pure tensor functions; `baselines.policies` binds them to an env
with the agents' `predict(obs)` interface; `baselines.mmkd` is MMKD.
"""

from . import mmkd  # noqa: F401  (registers the "mmkd" policy)
from .policies import POLICIES, FormulaPolicy, make_policy
from .weights import WEIGHT_FUNCTIONS

__all__ = ["POLICIES", "FormulaPolicy", "make_policy", "WEIGHT_FUNCTIONS"]
