"""Every test starts with Dynamo's caches empty: compiled frames of one test (and their recompile
counts, capped by recompile_limit) must not decide what the next test's backend sees.
`isolated_plan_cache`: the planner's disk cache in a temporary folder and its memory cache empty,
for the tests that count or compare plans (`pytestmark = pytest.mark.usefixtures(...)`)."""

import pytest
import torch._dynamo


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield


@pytest.fixture
def isolated_plan_cache(tmp_path, monkeypatch):
    from flashrnn_compile import planner

    monkeypatch.setenv("FLASHRNN_CACHE_DIR", str(tmp_path / "cache"))
    planner.clear_memory_cache()
    yield
    planner.clear_memory_cache()
