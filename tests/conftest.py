import os

from hypothesis import HealthCheck, settings

# numba compiles on first use (~0.5 s): no per-example deadline
settings.register_profile("certmask", deadline=None, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", deadline=None, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "certmask")
