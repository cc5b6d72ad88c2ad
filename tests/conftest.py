"""Settings shared by every test module."""

from hypothesis import settings

# Hypothesis's default 200 ms deadline per example is a timed assert, and these machines are shared:
# speed is measured in bench/, so property tests have no deadline.
settings.register_profile("shared-machine", deadline=None)
settings.load_profile("shared-machine")
