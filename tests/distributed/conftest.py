import pytest

from tests.distributed.pool import PoolCache


@pytest.fixture(scope="session")
def pools():
    """pools(backend="gloo") -> the RankPool of that backend, kept for the whole session."""
    cache = PoolCache()
    yield cache
    cache.close()
