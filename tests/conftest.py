"""Shared test settings: hypothesis runs a fixed, bounded profile unless told otherwise."""
import os

from hypothesis import settings

# "ci": the same examples on every run (derandomized), few enough for a 2-core CI box.
# HYPOTHESIS_PROFILE=deep explores further (random seeds, 20x the examples).
settings.register_profile("ci", derandomize=True, max_examples=150, deadline=None, print_blob=True)
settings.register_profile("deep", max_examples=3000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
