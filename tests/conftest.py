"""Shared fixtures: real servers on free loopback ports, nothing faked."""

from __future__ import annotations

import pytest

from tests.support import RedisServer, free_port, gateway_factory


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real redis-server for the session; `redis_url` empties it for each test."""
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    redis_server.flush()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory):
    """A master, two replicas and three sentinels for the session; `sentinel_url` empties it for each test."""
    from tests.redis_topologies import SentinelSet

    topology = SentinelSet(tmp_path_factory.mktemp("sentinel")).start()
    yield topology
    topology.stop()


@pytest.fixture
def sentinel_url(redis_sentinel):
    redis_sentinel.flush()
    return redis_sentinel.url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A 3-master Redis Cluster for the session; `cluster_url` empties it for each test."""
    from tests.redis_topologies import ClusterSet

    topology = ClusterSet(tmp_path_factory.mktemp("cluster")).start()
    yield topology
    topology.stop()


@pytest.fixture
def cluster_url(redis_cluster):
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server this test may stop and start (fail-closed tests)."""
    server = RedisServer(free_port(), tmp_path).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def demo_model():
    """One demo model process for the session; `demo` resets it for each test."""
    from tests.support import start_demo

    model = start_demo("--stream-delay-ms", "50")
    yield model
    model.stop()


@pytest.fixture
def demo(demo_model):
    demo_model.reset()
    return demo_model


@pytest.fixture
def make_gateway(tmp_path, demo):
    """In-process gateways in front of the demo model (model `demo`, version v1).

    `async with make_gateway(policy=..., store=..., extra=...) as gw:` starts a fresh one;
    a package that needs other models overrides this fixture.
    """
    return gateway_factory(tmp_path, {"demo": {"v1": demo.url}})


def pytest_sessionfinish(session, exitstatus):
    """In CI (GATEWAY_STRICT_TESTS=1) a skipped test fails the run: skipped is not passed."""
    import os

    if os.environ.get("GATEWAY_STRICT_TESTS") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and session.exitstatus == 0:
        reporter.write_line(f"error: {skipped} test(s) skipped; CI requires every test to run", red=True)
        session.exitstatus = 1
