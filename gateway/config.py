"""Typed gateway settings loaded from YAML; every error names the file, line and key.

The loader walks PyYAML's node tree rather than the plain dict so that a bad
value can be reported as ``gateway.yaml:12: upstream.sasl.mechanism: ...``.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names file, line and key and never a secret's value."""


class Secret:
    """A credential that cannot end up in a log line, repr or error message by accident."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source  # where it came from ("config", "env:NAME", "file:PATH"), safe to log

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(from {self.source})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class SaslSettings:
    mechanism: str  # PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512
    username: str
    password: Secret


@dataclass(frozen=True)
class TlsSettings:
    ca_file: str | None
    server_hostname: str | None
    verify: bool = True


@dataclass(frozen=True)
class UpstreamSettings:
    bootstrap_servers: tuple[tuple[str, int], ...]
    sasl: SaslSettings | None
    tls: TlsSettings | None
    connect_timeout_s: float = 10.0


@dataclass(frozen=True)
class ListenSettings:
    host: str = "127.0.0.1"
    bootstrap_port: int = 9092
    node_port_base: int = 9093
    first_node_id: int = 1  # the broker node id served on node_port_base
    # 9093..9099 by default, below the admin port 9100; raise it (and move admin) for larger clusters
    max_nodes: int = 7
    advertised_host: str = "127.0.0.1"

    def node_port(self, node_id: int) -> int | None:
        """The gateway port that stands for a broker, or None when the id is outside the mapped range."""
        index = node_id - self.first_node_id
        if 0 <= index < self.max_nodes:
            return self.node_port_base + index
        return None


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = 100 * 1024 * 1024  # Kafka's socket.request.max.bytes default
    max_response_bytes: int = 256 * 1024 * 1024
    pre_auth_max_bytes: int = 128 * 1024  # Kafka caps pre-SASL receives at 131072 bytes
    max_inflight: int = 1024
    write_buffer_high: int = 4 * 1024 * 1024
    idle_timeout_s: float = 600.0
    # Threads per worker that mask the partitions of one Fetch response side by side (the masking kernel
    # and the codecs release the GIL). 0: all on the event loop's thread.
    mask_threads: int = 2
    # Fetch and mask a consumer's next masked response while it reads this one (gateway/handlers/read_ahead.py).
    read_ahead: bool = True


ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


@dataclass(frozen=True)
class OidcSettings:
    """Where tokens come from and how they are checked. Only asymmetric algorithms are ever accepted."""

    issuer: str
    audience: str
    jwks_uri: str | None = None  # None: found by OIDC discovery from the issuer
    principal_claim: str = "sub"
    groups_claim: str = "groups"  # a dotted path such as realm_access.roles
    algorithms: tuple[str, ...] = ASYMMETRIC_ALGORITHMS
    leeway_s: float = 30.0
    jwks_refresh_s: float = 300.0  # scheduled refresh
    jwks_min_refresh_s: float = 30.0  # at most one refresh per interval when an unknown kid shows up
    jwks_max_stale_s: float = 86400.0  # keep the last good key set this long while the IdP is unreachable
    ca_file: str | None = None
    http_timeout_s: float = 5.0


@dataclass(frozen=True)
class AuthSettings:
    oidc: OidcSettings | None = None  # None: clients connect without SASL (development only)
    sasl_plain: bool = False  # also accept SASL/PLAIN with the token as the password


@dataclass(frozen=True)
class PolicySettings:
    path: Path | None = None  # a policy file or a directory of *.yaml; None: every request is denied
    watch_interval_s: float = 1.0  # the supervisor reloads when a policy file changes
    max_bytes: int = 16 * 1024 * 1024  # shared-memory room for one compiled snapshot


@dataclass(frozen=True)
class WebhookSettings:
    url: str
    secret: Secret  # HMAC-SHA256 key of the X-Streamward-Signature header
    format: str = "generic"  # "generic" JSON event, or "slack" (a {"text": ...} message)


@dataclass(frozen=True)
class ApprovalSettings:
    # Where requests and grants live: "sqlite" (a file in data_dir) or a postgresql:// URL (several
    # gateway nodes sharing grants; changes announced with LISTEN/NOTIFY).
    store: str = "sqlite"
    database_url: Secret | None = None  # the PostgreSQL URL (it may hold a password)
    data_dir: Path = Path("data")
    webhooks: tuple[WebhookSettings, ...] = ()
    webhook_attempts: int = 6  # deliveries tried per event and webhook before it is logged as failed
    webhook_backoff_s: float = 0.5  # the first retry's wait; doubled each time, capped at 30 s
    default_duration_s: int = 3600  # a grant's length when neither the request nor the rule says
    # Where "now" comes from for grants: "system", or "file:PATH" (tests drive expiry with a fake clock).
    clock: str = "system"
    check_interval_s: float = 0.1  # how often workers look for grants that ended (revoked or expired)
    max_bytes: int = 4 * 1024 * 1024  # shared-memory room for the table of active grants


@dataclass(frozen=True)
class AdminSettings:
    host: str = "127.0.0.1"
    port: int = 9100


@dataclass(frozen=True)
class GatewayConfig:
    path: Path
    listen: ListenSettings
    upstream: UpstreamSettings
    limits: Limits = field(default_factory=Limits)
    admin: AdminSettings = field(default_factory=AdminSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    masking_key: Secret | None = None  # HMAC key of the masking hash strategy (masking.hmac_key)
    approvals: ApprovalSettings = field(default_factory=ApprovalSettings)
    workers: int = 0  # 0: one per core
    drain_timeout_s: float = 30.0
    log_level: str = "INFO"

    @property
    def worker_count(self) -> int:
        return self.workers or (os.cpu_count() or 1)


class _Node:
    """A YAML mapping with its source position, for error messages."""

    def __init__(self, path: str, node: yaml.Node, key: str) -> None:
        self.file = path
        self.node = node
        self.key = key

    def error(self, message: str, node: yaml.Node | None = None) -> ConfigError:
        mark = (node or self.node).start_mark
        return ConfigError(f"{self.file}:{mark.line + 1}: {self.key or '<top>'}: {message}")

    def _items(self) -> dict[str, yaml.Node]:
        if not isinstance(self.node, yaml.MappingNode):
            raise self.error("expected a mapping")
        return {k.value: v for k, v in self.node.value}

    def keys_allowed(self, allowed: set[str]) -> None:
        for key_node, _ in self.node.value if isinstance(self.node, yaml.MappingNode) else ():
            if key_node.value not in allowed:
                raise self.error(f"unknown key {key_node.value!r} (known: {', '.join(sorted(allowed))})", key_node)

    def child(self, key: str) -> _Node | None:
        node = self._items().get(key)
        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")):
            return None
        return _Node(self.file, node, f"{self.key}.{key}" if self.key else key)

    def value(self, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
        child = self.child(key)
        if child is None:
            if required:
                raise self.error(f"missing required key {key!r}")
            return default
        raw = yaml.safe_load(yaml.serialize(child.node))
        if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
            raw = float(raw)
        if not isinstance(raw, kind) or (kind is int and isinstance(raw, bool)):
            expected = "/".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
            raise child.error(f"expected {expected}, got {type(raw).__name__}")
        return raw


def _host_port(text: str, where: _Node) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise where.error(f"expected host:port, got {text!r}")
    return host, int(port)


def _secret(where: _Node, key: str, resolve: bool = True) -> Secret:
    """A secret given inline, as {env: NAME} or as {file: PATH}; the value never reaches an error message.
    With resolve=False the reference is checked but not read (tools that never connect upstream)."""
    child = where.child(key)
    if child is None:
        raise where.error(f"missing required key {key!r}")
    if isinstance(child.node, yaml.ScalarNode):
        return Secret(str(child.node.value), "config")
    child.keys_allowed({"env", "file"})
    env_name = child.value("env", str)
    file_name = child.value("file", str)
    if (env_name is None) == (file_name is None):
        raise child.error("give exactly one of 'env' or 'file'")
    if not resolve:
        return Secret("", f"env:{env_name}" if env_name is not None else f"file:{file_name}")
    if env_name is not None:
        value = os.environ.get(env_name)
        if not value:
            raise child.error(f"environment variable {env_name} is not set")
        return Secret(value, f"env:{env_name}")
    secret_path = Path(file_name)
    if not secret_path.is_absolute():
        secret_path = Path(where.file).parent / secret_path
    try:
        value = secret_path.read_text().strip()
    except OSError as exc:
        raise child.error(f"cannot read secret file {secret_path}: {exc.strerror}") from None
    return Secret(value, f"file:{secret_path}")


def _port(node: _Node, key: str, default: int) -> int:
    value = node.value(key, int, default)
    if not 0 < value < 65536:
        raise node.error(f"{key} must be a TCP port, got {value}")
    return value


def _listen(node: _Node | None) -> ListenSettings:
    if node is None:
        return ListenSettings()
    node.keys_allowed({"host", "bootstrap_port", "node_port_base", "first_node_id", "max_nodes", "advertised_host"})
    defaults = ListenSettings()
    settings = ListenSettings(
        host=node.value("host", str, defaults.host),
        bootstrap_port=_port(node, "bootstrap_port", defaults.bootstrap_port),
        node_port_base=_port(node, "node_port_base", defaults.node_port_base),
        first_node_id=node.value("first_node_id", int, defaults.first_node_id),
        max_nodes=node.value("max_nodes", int, defaults.max_nodes),
        advertised_host=node.value("advertised_host", str, defaults.advertised_host),
    )
    if settings.max_nodes < 1 or settings.node_port_base + settings.max_nodes > 65536:
        raise node.error("node_port_base + max_nodes must stay within the TCP port range")
    if settings.node_port_base <= settings.bootstrap_port < settings.node_port_base + settings.max_nodes:
        raise node.error("bootstrap_port falls inside the per-broker port range")
    return settings


def _upstream(node: _Node | None, top: _Node, resolve_secrets: bool) -> UpstreamSettings:
    if node is None:
        raise top.error("missing required key 'upstream'")
    node.keys_allowed({"bootstrap_servers", "sasl", "tls", "connect_timeout_s"})
    servers_node = node.child("bootstrap_servers")
    if servers_node is None:
        raise node.error("missing required key 'bootstrap_servers'")
    raw = node.value("bootstrap_servers", (list, str))
    items = raw.split(",") if isinstance(raw, str) else raw
    if not items or not all(isinstance(item, str) for item in items):
        raise servers_node.error("expected a list of host:port strings")
    servers = tuple(_host_port(item.strip(), servers_node) for item in items)

    sasl = None
    sasl_node = node.child("sasl")
    if sasl_node is not None:
        sasl_node.keys_allowed({"mechanism", "username", "password"})
        mechanism = sasl_node.value("mechanism", str, "SCRAM-SHA-512").upper()
        if mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            raise sasl_node.error(f"mechanism must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, got {mechanism!r}")
        sasl = SaslSettings(mechanism, sasl_node.value("username", str, required=True),
                            _secret(sasl_node, "password", resolve_secrets))

    tls = None
    tls_node = node.child("tls")
    if tls_node is not None:
        tls_node.keys_allowed({"enabled", "ca_file", "server_hostname", "verify"})
        if tls_node.value("enabled", bool, True):
            ca_file = tls_node.value("ca_file", str)
            if ca_file is not None and not Path(ca_file).is_file():
                raise tls_node.error(f"ca_file {ca_file} does not exist")
            tls = TlsSettings(ca_file, tls_node.value("server_hostname", str), tls_node.value("verify", bool, True))

    timeout = node.value("connect_timeout_s", float, 10.0)
    return UpstreamSettings(servers, sasl, tls, timeout)


def _limits(node: _Node | None) -> Limits:
    if node is None:
        return Limits()
    names = {f for f in Limits.__dataclass_fields__}
    node.keys_allowed(names)
    defaults = Limits()
    values = {}
    for name in names:
        default = getattr(defaults, name)
        value = node.value(name, type(default), default)
        if type(default) is bool:
            pass
        elif name == "mask_threads":
            if not 0 <= value <= 64:
                raise node.error("mask_threads must be 0 to 64")
        elif value <= 0:
            raise node.error(f"{name} must be positive")
        values[name] = value
    return Limits(**values)


def is_loopback_host(host: str) -> bool:
    """localhost or a loopback address (127.0.0.0/8, ::1); a name that merely starts with "127." is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _checked_url(node: _Node, key: str, required: bool) -> str | None:
    """IdP URLs come only from config, and must be https unless they point at this machine."""
    url = node.value(key, str, required=required)
    if url is None:
        return None
    parsed = urlparse(url)
    if parsed.scheme not in ("https", "http") or not parsed.hostname:
        raise node.error(f"{key} must be an http(s) URL, got {url!r}")
    if parsed.scheme == "http" and not is_loopback_host(parsed.hostname):
        raise node.error(f"{key} must use https (http is allowed only for a loopback IdP)")
    return url.rstrip("/") if key == "issuer" else url


def _auth(node: _Node | None) -> AuthSettings:
    if node is None:
        return AuthSettings()
    node.keys_allowed({"oidc", "sasl_plain"})
    oidc_node = node.child("oidc")
    oidc = None
    if oidc_node is not None:
        names = set(OidcSettings.__dataclass_fields__)
        oidc_node.keys_allowed(names)
        defaults = OidcSettings(issuer="", audience="")
        issuer = _checked_url(oidc_node, "issuer", required=True)
        audience = oidc_node.value("audience", str, required=True)
        if not audience:
            raise oidc_node.error("audience must not be empty")
        algorithms = tuple(oidc_node.value("algorithms", list, list(defaults.algorithms)))
        refused = [a for a in algorithms if a not in ASYMMETRIC_ALGORITHMS]
        if refused or not algorithms:
            raise oidc_node.error(f"algorithms must be asymmetric ({', '.join(ASYMMETRIC_ALGORITHMS)}); "
                                  f"refused: {', '.join(map(str, refused)) or 'empty list'}")
        timings = {}
        for name in ("leeway_s", "jwks_refresh_s", "jwks_min_refresh_s", "jwks_max_stale_s", "http_timeout_s"):
            timings[name] = oidc_node.value(name, float, getattr(defaults, name))
            if timings[name] < 0 or (name != "leeway_s" and timings[name] == 0):
                raise oidc_node.error(f"{name} must be positive")
        ca_file = oidc_node.value("ca_file", str)
        if ca_file is not None and not Path(ca_file).is_file():
            raise oidc_node.error(f"ca_file {ca_file} does not exist")
        oidc = OidcSettings(
            issuer=issuer or "", audience=audience, jwks_uri=_checked_url(oidc_node, "jwks_uri", required=False),
            principal_claim=oidc_node.value("principal_claim", str, defaults.principal_claim),
            groups_claim=oidc_node.value("groups_claim", str, defaults.groups_claim),
            algorithms=algorithms, ca_file=ca_file, **timings)
    sasl_plain = node.value("sasl_plain", bool, False)
    if sasl_plain and oidc is None:
        raise node.error("sasl_plain carries OIDC tokens as passwords: it needs auth.oidc")
    return AuthSettings(oidc, sasl_plain)


def _policy(node: _Node | None) -> PolicySettings:
    if node is None:
        return PolicySettings()
    node.keys_allowed({"path", "watch_interval_s", "max_bytes"})
    defaults = PolicySettings()
    raw = node.value("path", str, required=True)
    path = Path(raw)
    if not path.is_absolute():
        path = Path(node.file).parent / path
    if not path.exists():
        raise node.error(f"policy path {raw} does not exist")
    interval = node.value("watch_interval_s", float, defaults.watch_interval_s)
    max_bytes = node.value("max_bytes", int, defaults.max_bytes)
    if interval <= 0 or max_bytes < 4096:
        raise node.error("watch_interval_s must be positive and max_bytes at least 4096")
    return PolicySettings(path, interval, max_bytes)


def _approvals(node: _Node | None, top: _Node, resolve_secrets: bool) -> ApprovalSettings:
    """Relative data_dir is relative to the config file, as the policy path is."""
    defaults = ApprovalSettings()
    if node is None:
        return ApprovalSettings(data_dir=Path(top.file).parent / defaults.data_dir)
    node.keys_allowed({"store", "database_url", "data_dir", "webhooks", "webhook_attempts", "webhook_backoff_s",
                       "default_duration_s", "clock", "check_interval_s", "max_bytes"})
    store = node.value("store", str, "sqlite")
    if store not in ("sqlite", "postgresql"):
        raise node.child("store").error("store is sqlite or postgresql")
    database_url = None
    if store == "postgresql":
        database_url = _secret(node, "database_url", resolve_secrets)
        if resolve_secrets and not database_url.reveal().startswith(("postgresql://", "postgres://")):
            raise node.child("database_url").error("database_url must be a postgresql:// URL")
    elif node.child("database_url") is not None:
        raise node.child("database_url").error("database_url needs 'store: postgresql'")
    data_dir = Path(node.value("data_dir", str, str(defaults.data_dir)))
    if not data_dir.is_absolute():
        data_dir = Path(node.file).parent / data_dir
    webhooks = []
    hooks_node = node.child("webhooks")
    if hooks_node is not None:
        if not isinstance(hooks_node.node, yaml.SequenceNode):
            raise hooks_node.error("webhooks is a list of {url, secret, format}")
        for index, item in enumerate(hooks_node.node.value):
            hook = _Node(hooks_node.file, item, f"{hooks_node.key}[{index}]")
            hook.keys_allowed({"url", "secret", "format"})
            url = hook.value("url", str, required=True)
            if not url.startswith("https://") and not (url.startswith("http://") and
                                                        is_loopback_host(urlparse(url).hostname or "")):
                raise hook.child("url").error("a webhook URL must be https (http only to a loopback host)")
            fmt = hook.value("format", str, "generic")
            if fmt not in ("generic", "slack"):
                raise hook.child("format").error("format is generic or slack")
            webhooks.append(WebhookSettings(url, _secret(hook, "secret", resolve_secrets), fmt))
    attempts = node.value("webhook_attempts", int, defaults.webhook_attempts)
    backoff = node.value("webhook_backoff_s", float, defaults.webhook_backoff_s)
    if not 1 <= attempts <= 20 or not 0 < backoff <= 60:
        raise node.error("webhook_attempts must be 1 to 20 and webhook_backoff_s in (0, 60]")
    duration = node.value("default_duration_s", int, defaults.default_duration_s)
    clock = node.value("clock", str, "system")
    if clock != "system" and not (clock.startswith("file:") and len(clock) > 5):
        raise node.child("clock").error("clock is system or file:PATH (tests only)")
    interval = node.value("check_interval_s", float, defaults.check_interval_s)
    max_bytes = node.value("max_bytes", int, defaults.max_bytes)
    if duration <= 0 or not 0 < interval <= 0.5 or max_bytes < 4096:
        raise node.error("default_duration_s must be positive, check_interval_s in (0, 0.5] (a grant that ends "
                         "must end connections within a second) and max_bytes at least 4096")
    return ApprovalSettings(store, database_url, data_dir, tuple(webhooks), attempts, backoff, duration, clock,
                            interval, max_bytes)


def load_config(path: str | os.PathLike[str], *, resolve_secrets: bool = True) -> GatewayConfig:
    """Read and validate a gateway config file; raise ConfigError naming file, line and key."""
    file = str(path)
    try:
        text = Path(file).read_text()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from None
    if root is None:
        raise ConfigError(f"{file}: empty config")
    top = _Node(file, root, "")
    top.keys_allowed({"listen", "upstream", "limits", "admin", "auth", "policy", "masking", "approvals", "workers",
                      "drain_timeout_s", "log_level"})
    masking_key = None
    masking_node = top.child("masking")
    if masking_node is not None:
        masking_node.keys_allowed({"hmac_key"})
        masking_key = _secret(masking_node, "hmac_key", resolve_secrets)

    admin_node = top.child("admin")
    admin = AdminSettings()
    if admin_node is not None:
        admin_node.keys_allowed({"host", "port"})
        admin = AdminSettings(admin_node.value("host", str, admin.host), _port(admin_node, "port", admin.port))

    listen = _listen(top.child("listen"))
    gateway_ports = {listen.bootstrap_port, *range(listen.node_port_base, listen.node_port_base + listen.max_nodes)}
    if admin.port in gateway_ports and admin.host == listen.host:
        raise (admin_node or top).error(f"admin port {admin.port} collides with a Kafka listener port")
    workers = top.value("workers", int, 0)
    if workers < 0:
        raise top.error("workers must be 0 (one per core) or more")
    log_level = top.value("log_level", str, "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise top.error(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
    return GatewayConfig(
        path=Path(file),
        listen=listen,
        upstream=_upstream(top.child("upstream"), top, resolve_secrets),
        limits=_limits(top.child("limits")),
        admin=admin,
        auth=_auth(top.child("auth")),
        policy=_policy(top.child("policy")),
        masking_key=masking_key,
        approvals=_approvals(top.child("approvals"), top, resolve_secrets),
        workers=workers,
        drain_timeout_s=top.value("drain_timeout_s", float, 30.0),
        log_level=log_level,
    )
