"""The models a replica can route to: each version's upstream connection pool and headers.

Which version is active is control state (`gateway.state`); this module holds what is
needed to reach each version. Versions come from the config at start-up and can be added
at run time from the registry.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field

from gateway.config import Config, Timeouts, UpstreamTls, VersionConfig
from gateway.configfile import ConfigError
from gateway.upstream import ConnectionBudget, Endpoint, Endpoints, UpstreamPool
from gateway.upstream.egress import proxy_for


@dataclass(slots=True)
class VersionRoute:
    model: str
    name: str
    upstream: str  # the first endpoint (what a pre-switch check and a smoke run talk to)
    pool: Endpoints
    extra_headers: list[tuple[bytes, bytes]]
    served_name: str | None = None  # what the upstream calls the model, when not its public name


@dataclass(slots=True)
class ModelRoute:
    name: str
    versions: dict[str, VersionRoute] = field(default_factory=dict)


def upstream_ssl_context(tls: UpstreamTls | None) -> ssl.SSLContext | None:
    """TLS to an upstream as configured: private CA, client certificate, or verification off.

    Files that exist but cannot be used (not PEM, a key that does not match) are a
    `ValueError` saying so.
    """
    if tls is None:
        return None
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_bundle) if tls.ca_bundle else None)
        if tls.client_cert:
            context.load_cert_chain(str(tls.client_cert), str(tls.client_key) if tls.client_key else None)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"cannot use the TLS files: {exc}") from None
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def make_version_route(model: str, name: str, version: VersionConfig, timeouts: Timeouts,
                       max_connections: int = 512, *, proxy_from_env: bool = True) -> VersionRoute:
    urls = version.urls
    try:
        context = upstream_ssl_context(version.tls) if any(u.startswith("https") for u in urls) else None
    except ValueError as exc:
        raise ValueError(f"tls: {exc}") from None
    try:
        proxies = {url: proxy_for(url) if proxy_from_env else None for url in urls}
    except ValueError as exc:
        raise ValueError(f"upstream: {exc} (from the environment; egress.proxy_from_env: false ignores it)") from None

    def pool(url: str, budget: ConnectionBudget) -> UpstreamPool:
        return UpstreamPool(url, ssl_context=context if url.startswith("https") else None,
                            connect_timeout=timeouts.connect, read_timeout=timeouts.read,
                            idle_timeout=timeouts.pool_idle, budget=budget, proxy=proxies[url])

    endpoints = Endpoints(urls, pool, budget=ConnectionBudget(max_connections, timeouts.connect),
                          probe_interval=version.probe_interval, connect_timeout=timeouts.connect)
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in version.headers.items()]
    served = version.served_name if version.served_name != model else None
    return VersionRoute(model, name, urls[0], endpoints, extra, served)


class Catalog:
    """Every model and version this replica knows how to reach."""

    def __init__(self, config: Config) -> None:
        self.timeouts = config.timeouts
        self.max_connections = config.limits.upstream_connections
        self.proxy_from_env = config.egress.proxy_from_env
        self.models: dict[str, ModelRoute] = {}
        problems = []
        for model_name, model in config.models.items():
            route = ModelRoute(model_name)
            for version_name, version in model.versions.items():
                try:
                    route.versions[version_name] = make_version_route(
                        model_name, version_name, version, config.timeouts, self.max_connections,
                        proxy_from_env=self.proxy_from_env)
                except ValueError as exc:
                    problems.append(f"{config.source or 'config'}: models.{model_name}.versions.{version_name}.{exc}")
            self.models[model_name] = route
        if problems:
            self.close()
            raise ConfigError(problems)

    def add_version(self, model: str, name: str, version: VersionConfig) -> VersionRoute:
        route = self.models.setdefault(model, ModelRoute(model))
        existing = route.versions.get(name)
        if existing is not None:
            return existing
        added = make_version_route(model, name, version, self.timeouts, self.max_connections,
                                   proxy_from_env=self.proxy_from_env)
        route.versions[name] = added
        return added

    def endpoints(self) -> Iterator[tuple[str, str, Endpoint]]:
        """Every (model, version, endpoint) this replica sends to."""
        for model, route in self.models.items():
            for version, version_route in route.versions.items():
                for endpoint in version_route.pool.endpoints:
                    yield model, version, endpoint

    def close(self) -> None:
        for model in self.models.values():
            for version in model.versions.values():
                version.pool.close()
