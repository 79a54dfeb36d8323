"""The gateway's configuration file: models, tokens, store, policy, limits, timeouts.

Validated whole at start-up (and by `gateway config check`): a file that starts is a
file that works. Relative paths are relative to the config file's folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.configfile import Seconds, load_model, resolve_path
from gateway.policies_data import default_policy

Role = Literal["client", "reviewer", "operator", "auditor"]
ROLES: tuple[str, ...] = ("client", "reviewer", "operator", "auditor")

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# A model's public name may hold "/" between segments, as Hugging Face names do
# (`meta-llama/Llama-3.1-8B-Instruct`); each segment starts with a letter or digit, so none is "." or "..".
_MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*$"
MODEL_NAME_MAX = 128
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token

DEFAULT_CONTROL_BODY_BYTES = 1 << 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _path_field(value: Any, info: ValidationInfo) -> Path | None:
    base = (info.context or {}).get("base_dir")
    return resolve_path(value, base)


def _existing_file(value: Any, info: ValidationInfo) -> Path | None:
    path = _path_field(value, info)
    if path is not None and not path.is_file():
        raise ValueError(f"expected an existing file, {path} does not exist")
    return path


class ListenerTls(_Strict):
    cert: Path
    key: Path

    _files = field_validator("cert", "key", mode="before")(_existing_file)


class Listen(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    tls: ListenerTls | None = None


class UpstreamTls(_Strict):
    """TLS to an upstream: a private CA bundle and/or a client certificate."""

    ca_bundle: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    verify: bool = True

    _files = field_validator("ca_bundle", "client_cert", "client_key", mode="before")(_existing_file)

    @model_validator(mode="after")
    def _pair(self) -> "UpstreamTls":
        if self.client_key and not self.client_cert:
            raise ValueError("client_key needs client_cert")
        return self


class Trust(_Strict):
    """Who may sign a version's weights: a public key or a root certificate."""

    public_key: Path | None = None
    cert_root: Path | None = None

    _files = field_validator("public_key", "cert_root", mode="before")(_existing_file)

    @model_validator(mode="after")
    def _one(self) -> "Trust":
        if (self.public_key is None) == (self.cert_root is None):
            raise ValueError("give exactly one of public_key or cert_root")
        return self


def _sendable_headers(headers: dict[str, str]) -> dict[str, str]:
    """Headers the gateway sends as they are: a field name, and a value that cannot end or split the header.

    Checked after `${ENV}` interpolation, for config files and versions added at run time
    alike. Values are never shown in the message: they are usually credentials.
    """
    for name, value in headers.items():
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"header name {name!r} is not an HTTP field name (letters, digits and !#$%&'*+-.^_`|~)")
        if name.lower() in _FRAMING:
            raise ValueError(f"header {name} is the gateway's to set on each request (it frames the message); "
                             f"it cannot be configured")
        if "\r" in value or "\n" in value or "\0" in value:
            raise ValueError(f"header {name}: the value holds a CR, LF or NUL character, which would end the header")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"header {name}: the value is not latin-1 text (header values go on the wire as bytes)") from None
    return headers


_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
                      "trailer", "expect", "proxy-connection"})

Headers = Annotated[dict[str, str], AfterValidator(_sendable_headers)]


class VersionConfig(_Strict):
    upstream: AnyHttpUrl | None = Field(None, description="the version's base URL (or `upstreams` for several)")
    upstreams: tuple[AnyHttpUrl, ...] = Field((), description="several base URLs: replicas of one inference server")
    probe_interval: Seconds = Field(2.0, gt=0, description="how often an ejected endpoint is tried again")
    headers: Headers = Field(default_factory=dict, description="added to every upstream request, e.g. an API key")
    tls: UpstreamTls | None = None
    artifact: Path | None = None
    signature: Path | None = None
    trust: Trust | None = None
    ignore_paths: tuple[str, ...] = ()
    health_path: str = Field("/", description="what the pre-switch check asks the upstream (any answer below 500 passes)")
    served_name: str | None = Field(None, min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f\"\\]+$",
                                    description="the name the upstream serves this model under, when it is not the "
                                                "public one: the body's `model` is rewritten on the way in and back")

    _paths = field_validator("artifact", "signature", mode="before")(_path_field)

    @field_validator("upstream")
    @classmethod
    def _no_query(cls, url: AnyHttpUrl | None) -> AnyHttpUrl | None:
        if url is not None and (url.query or url.fragment):
            raise ValueError("expected a base URL without query or fragment")
        return url

    @field_validator("upstreams")
    @classmethod
    def _no_queries(cls, urls: tuple[AnyHttpUrl, ...]) -> tuple[AnyHttpUrl, ...]:
        for url in urls:
            if url.query or url.fragment:
                raise ValueError(f"expected base URLs without query or fragment (got {url})")
        if len(set(map(str, urls))) != len(urls):
            raise ValueError("an endpoint is listed twice")
        return urls

    @model_validator(mode="after")
    def _one_way_to_the_upstream(self) -> "VersionConfig":
        if (self.upstream is None) == (not self.upstreams):
            raise ValueError("give `upstream: URL` or `upstreams: [URL, ...]`")
        return self

    @property
    def urls(self) -> list[str]:
        """Every endpoint of the version, as given."""
        return [str(self.upstream)] if self.upstream is not None else [str(u) for u in self.upstreams]

    @model_validator(mode="after")
    def _integrity_complete(self) -> "VersionConfig":
        given = [n for n in ("artifact", "signature", "trust") if getattr(self, n) is not None]
        if given and len(given) != 3:
            missing = sorted({"artifact", "signature", "trust"} - set(given))
            raise ValueError(f"a signed version needs artifact, signature and trust; missing {', '.join(missing)}")
        return self

    @property
    def signed(self) -> bool:
        return self.artifact is not None


class RunTimeVersions(_Strict):
    """What a version added at run time (`POST /admin/models/{m}/versions`) may take from the environment.

    Its `${VAR}` references are resolved on each replica and sent to the upstream the
    operator names; only the variables listed here may be named (default: none), so an
    operator cannot send another model's key, or anything else in the environment, away.
    """

    allowed_env: tuple[Annotated[str, Field(pattern=_ENV_NAME)], ...] = Field(
        (), description="environment variables its ${VAR} references may name, e.g. [CREDIT_API_KEY]")


class ModelConfig(_Strict):
    active: str | None = Field(None, description="the version that serves at first start; default: the first listed")
    versions: dict[Annotated[str, Field(pattern=_NAME)], VersionConfig] = Field(min_length=1)
    versions_api: RunTimeVersions = RunTimeVersions()

    @model_validator(mode="after")
    def _active_known(self) -> "ModelConfig":
        if self.active is not None and self.active not in self.versions:
            raise ValueError(f"active version {self.active!r} is not one of the versions ({', '.join(self.versions)})")
        return self

    @property
    def initial_version(self) -> str:
        return self.active or next(iter(self.versions))


class TokenConfig(_Strict):
    id: str = Field(pattern=_NAME)
    role: Role | None = None
    roles: tuple[Role, ...] | None = Field(None, description="several roles for one token, e.g. [client, reviewer]")
    sha256: str = Field(description="hex SHA-256 of the token; `gateway token new` prints it")

    @model_validator(mode="after")
    def _one_of_role_or_roles(self) -> "TokenConfig":
        if (self.role is None) == (not self.roles):
            raise ValueError("give `role: R` or `roles: [R, ...]`")
        return self

    @property
    def all_roles(self) -> frozenset[str]:
        return frozenset(self.roles or (self.role,))  # type: ignore[arg-type]

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        value = value.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("expected 64 hex characters (the SHA-256 of the token, not the token itself)")
        return value


class Limits(_Strict):
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_response_buffer_bytes: int = Field(16 * 1024 * 1024, gt=0, description="largest answer held for review")
    max_control_body_bytes: int = Field(DEFAULT_CONTROL_BODY_BYTES, gt=0,
                                        description="largest control-plane body (JSON, console form); 413 while reading")
    max_header_bytes: int = Field(64 * 1024, gt=0, description="a request's header block, read before anything else: 431")
    max_headers: int = Field(128, gt=0, description="header fields in one request: 431")
    max_url_bytes: int = Field(16 * 1024, gt=0, description="the request target: 414")
    upstream_connections: int = Field(512, gt=0, description="connections one version may hold to its upstream")


class Timeouts(_Strict):
    connect: Seconds = 5.0
    read: Seconds = Field(120.0, description="longest wait for the upstream's next bytes")
    pool_idle: Seconds = Field(30.0, description="idle keep-alive connections are closed after this")
    client_header: Seconds = Field(10.0, gt=0, description="a client's whole header block must arrive within this: 408")
    client_body: Seconds = Field(60.0, gt=0, description="a client's whole body must arrive within this, once its "
                                                          "headers are in: 408")


class MetricsConfig(_Strict):
    public: bool = Field(False, description="serve /metrics without a token")


class LoggingConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True


class EvidenceConfig(_Strict):
    """Where evidence goes and the keys that sign and encrypt it."""

    enabled: bool = True
    directory: Path | None = Field(None, description="default: {data_dir}/evidence; each replica takes a slot under it")
    signing_key: Path | None = Field(None, description="Ed25519 private key (`gateway evidence keygen`); "
                                     "default: made at first start in data_dir")
    encryption_key: str | None = Field(None, description="32 bytes, base64 or hex, usually ${ENV}: bodies encrypted at rest")
    encryption_key_file: Path | None = None
    key_id: str | None = None
    previous_keys: dict[str, str] = Field(default_factory=dict, description="key id -> key, to read older segments")

    _paths = field_validator("directory", "signing_key", "encryption_key_file", mode="before")(_path_field)

    @model_validator(mode="after")
    def _one_key_source(self) -> "EvidenceConfig":
        if self.encryption_key and self.encryption_key_file:
            raise ValueError("give encryption_key or encryption_key_file, not both")
        for name, value in [("encryption_key", self.encryption_key), *self.previous_keys.items()]:
            if value is not None and decode_key(value) is None:
                raise ValueError(f"{name}: expected 32 bytes as base64 or hex")
        return self


def decode_key(text: str) -> bytes | None:
    """A 32-byte key written as hex or base64; None if it is neither."""
    import base64
    import binascii

    text = text.strip()
    try:
        raw = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        return None
    return raw if len(raw) == 32 else None


class StoreDurability(_Strict):
    """What "acknowledged" means for writes to a Redis store (tickets, decisions, levels, incidents)."""

    replicas: Literal["auto"] | Annotated[int, Field(ge=0, le=16)] = Field(
        "auto", description="Redis replicas that must hold a write before it is acknowledged (WAIT); "
                            "auto: 1 with Sentinel, 0 otherwise")
    timeout: Seconds = Field(1.0, gt=0, description="how long a write waits for them before it is refused")


class Egress(_Strict):
    """How upstreams outside the network are reached."""

    proxy_from_env: bool = Field(True, description="honour HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY, as httpx does")


class WebhookTarget(_Strict):
    """Where incident notifications go: generic JSON, a Slack-compatible incoming webhook, or PagerDuty Events v2.

    Routed by event, severity and role: a target for a command role (`role: incident_commander`)
    pages that role; one for the incident commander pages on critical and high unless its
    `severities` say otherwise (seed: "Automatically paged on critical/high severity").
    """

    name: str = Field(pattern=_NAME)
    url: AnyHttpUrl
    format: Literal["json", "slack", "pagerduty"] = "json"
    headers: Headers = Field(default_factory=dict)
    events: tuple[Literal["detected", "acknowledged", "note", "resolved", "assigned"], ...] | None = Field(
        None, description="only these incident events (default: all)")
    severities: tuple[Literal["low", "medium", "high", "critical"], ...] | None = Field(
        None, description="only incidents of these severities (default: all; for role incident_commander: critical, high)")
    role: Literal["incident_commander", "technical_lead", "communications", "compliance"] | None = Field(
        None, description="the command role this target pages (its messages name who holds the role)")
    routing_key: str | None = Field(None, description="PagerDuty: the integration's routing key (use ${ENV}); "
                                    "added when sending, never stored in the outbox")

    @model_validator(mode="after")
    def _pagerduty_key(self) -> "WebhookTarget":
        if self.format == "pagerduty" and not self.routing_key:
            raise ValueError("format pagerduty needs `routing_key` (the Events v2 integration key, e.g. ${PD_ROUTING_KEY})")
        return self

    def wants(self, severity: str) -> bool:
        if self.severities is not None:
            return severity in self.severities
        return self.role != "incident_commander" or severity in ("critical", "high")


_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class OidcConfig(_Strict):
    """Console single sign-on: OpenID Connect, authorization code with PKCE (`gateway.console.sso`)."""

    issuer: str = Field(description="the provider's issuer URL; https (http only on loopback, for trials and tests)")
    client_id: str = Field(min_length=1, max_length=256)
    client_secret: SecretStr | None = Field(None, description="use ${ENV}; none for a public client (PKCE only)")
    redirect_url: str | None = Field(None, description="default: {the console's own origin}/console/sso/callback")
    scopes: tuple[str, ...] = Field(("openid", "profile", "groups"), description="requested scopes; must hold openid")
    roles_claim: str = Field("groups", min_length=1, description="the claim listing the user's groups (a dotted "
                             "path for a nested one, e.g. realm_access.roles); read from the ID token, else userinfo")
    roles: dict[Annotated[str, Field(min_length=1, max_length=256)], Literal["reviewer", "operator", "auditor"]] = Field(
        min_length=1, description="group (claim value) -> role; a user with no mapped console role is refused")
    label: str = Field("Sign in with SSO", min_length=1, max_length=64, description="the sign-in page's button")

    @field_validator("issuer", "redirect_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        from urllib.parse import urlsplit

        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("expected an absolute https URL without query or fragment")
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
            raise ValueError("plain http only on loopback (127.0.0.1, localhost, ::1); use https")
        return value

    @field_validator("scopes")
    @classmethod
    def _openid(cls, scopes: tuple[str, ...]) -> tuple[str, ...]:
        if "openid" not in scopes:
            raise ValueError("scopes must include openid")
        if any(not s or not re.fullmatch(r"[\x21\x23-\x5b\x5d-\x7e]+", s) for s in scopes):
            raise ValueError("a scope is a non-empty word of printable ASCII (no spaces, quotes or backslashes)")
        return scopes


class ConsoleConfig(_Strict):
    oidc: OidcConfig | None = Field(None, description="single sign-on; token sign-in stays available")


DATA_DIR_ENV = "GATEWAY_DATA_DIR"


def default_data_dir() -> Path:
    """`data_dir` when the file names none: $GATEWAY_DATA_DIR (relative to the working directory, as an environment
    variable's path is; the container sets /var/lib/gateway), else `data`, resolved against the config file's folder."""
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(value).expanduser().absolute() if value else Path("data")


class Config(_Strict):
    listen: Listen = Listen()
    data_dir: Path = Field(default_factory=default_data_dir, validate_default=True,
                           description="default: $GATEWAY_DATA_DIR, else `data` in the config file's folder")
    store: str = Field("embedded", description="'embedded' (SQLite in data_dir), or redis://, redis+sentinel:// "
                                                "or redis+cluster:// (gateway.store.redis_targets)")
    store_durability: StoreDurability = StoreDurability()
    policy: Path = Field(default_factory=default_policy, description="default: the policy shipped with the gateway")
    tokens: list[TokenConfig] = Field(default_factory=list)
    models: dict[Annotated[str, Field(pattern=_MODEL_NAME, max_length=MODEL_NAME_MAX)], ModelConfig] = Field(min_length=1)
    limits: Limits = Limits()
    timeouts: Timeouts = Timeouts()
    egress: Egress = Egress()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    evidence: EvidenceConfig = EvidenceConfig()
    notifications: list[WebhookTarget] = Field(default_factory=list)
    console: ConsoleConfig = ConsoleConfig()
    source: Path | None = Field(None, exclude=True, description="set by the loader")

    _paths = field_validator("data_dir", "policy", mode="before")(_path_field)

    @field_validator("store")
    @classmethod
    def _store_url(cls, value: str) -> str:
        if value == "embedded":
            return value
        from gateway.store.redis_targets import parse_target

        parse_target(value)  # ValueError says what is wrong
        return value

    @model_validator(mode="after")
    def _acks_the_store_can_give(self) -> "Config":
        if self.store.startswith("redis+cluster://") and self.store_durability.replicas not in ("auto", 0):
            raise ValueError("store_durability.replicas: a Redis Cluster cannot confirm writes on replicas (WAIT) "
                             "for the gateway's scripts; use 0, or Sentinel for acknowledged replication")
        if self.store == "embedded" and self.store_durability.replicas not in ("auto", 0):
            raise ValueError("store_durability.replicas: the embedded store has no replicas; use 0")
        return self

    @property
    def replicas_to_ack(self) -> int:
        """How many Redis replicas must hold an acknowledged write: `auto` is 1 with Sentinel, else 0."""
        replicas = self.store_durability.replicas
        if replicas == "auto":
            return 1 if self.store.startswith("redis+sentinel://") else 0
        return replicas

    @field_validator("tokens")
    @classmethod
    def _unique_tokens(cls, tokens: list[TokenConfig]) -> list[TokenConfig]:
        seen_ids, seen_hashes = set(), set()
        for t in tokens:
            if t.id in seen_ids:
                raise ValueError(f"token id {t.id!r} is used twice")
            if t.sha256 in seen_hashes:
                raise ValueError(f"token {t.id!r} has the same hash as another token")
            seen_ids.add(t.id)
            seen_hashes.add(t.sha256)
        return tokens


def load_config(path: str | Path) -> Config:
    """Load and validate a config file; raises `ConfigError` with one line per problem."""
    config = load_model(path, Config)
    return config.model_copy(update={"source": Path(path).resolve()})
