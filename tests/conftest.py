"""Every test starts with Dynamo's caches empty: compiled frames of one test (and their recompile
counts, capped by recompile_limit) must not decide what the next test's backend sees."""

import pytest
import torch._dynamo


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
