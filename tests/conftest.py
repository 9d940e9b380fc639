import os

import torch
from hypothesis import HealthCheck, settings

# Shapes differ between tests; give the compiled kernel room so it never falls
# back to the unfused path (which would leave the fused kernel untested).
torch._dynamo.config.cache_size_limit = 64
torch._dynamo.config.accumulated_cache_size_limit = 512
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

settings.register_profile(
    "default",
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("default")
