"""Hypothesis settings and JSON strategies shared by the fuzz properties of the unit and live tiers."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("SLMSERVE_FUZZ_EXAMPLES", "100"))
# Derandomized: CI runs the same cases every time (a CI run once drew 33 chat cases that all earned a
# 400 or 404, where this test needs the engines to answer some); `make fuzz` explores further with
# more examples, and SLMSERVE_FUZZ_RANDOM=1 draws new ones.
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=os.environ.get("SLMSERVE_FUZZ_RANDOM") != "1",
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
