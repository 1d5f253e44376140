"""Config errors name the file, the line and the key; secrets come from env or file and never show."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_config

UPSTREAM = "upstream:\n  bootstrap_servers: ['127.0.0.1:19092']\n"


def write(tmp_path, text: str):
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    return path


def test_minimal_config_gets_the_documented_defaults(tmp_path):
    config = load_config(write(tmp_path, UPSTREAM))
    assert (config.listen.bootstrap_port, config.listen.node_port_base, config.admin.port) == (9092, 9093, 9100)
    assert config.listen.node_port(1) == 9093 and config.listen.node_port(7) == 9099
    assert config.listen.node_port(8) is None and config.listen.node_port(0) is None
    assert config.limits.pre_auth_max_bytes == 131072


@pytest.mark.parametrize("text,where", [
    ("listen:\n  bootstrap_port: 70000\n" + UPSTREAM, "gw.yaml:2: listen: bootstrap_port must be a TCP port"),
    ("listen:\n  colour: blue\n" + UPSTREAM, "gw.yaml:2: listen: unknown key 'colour'"),
    ("workers: 2\n", "gw.yaml:1: <top>: missing required key 'upstream'"),
    ("upstream:\n  bootstrap_servers: ['nohost']\n", "gw.yaml:2: upstream.bootstrap_servers: expected host:port"),
    (UPSTREAM + "limits:\n  max_inflight: -3\n", "gw.yaml:4: limits: max_inflight must be positive"),
    (UPSTREAM + "admin:\n  port: 9094\n", "gw.yaml:4: admin: admin port 9094 collides"),
    (UPSTREAM + "  sasl:\n    username: gw\n    password: {env: STREAMWARD_TEST_UNSET_VAR}\n",
     "gw.yaml:5: upstream.sasl.password: environment variable STREAMWARD_TEST_UNSET_VAR is not set"),
])
def test_errors_name_file_line_and_key(tmp_path, text, where):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    assert where in str(error.value)


def test_secret_from_env_and_file_never_shows_in_repr(tmp_path, monkeypatch):
    monkeypatch.setenv("GW_SECRET", "from-env-123")
    config = load_config(write(tmp_path, UPSTREAM + "  sasl:\n    username: gw\n    password: {env: GW_SECRET}\n"))
    assert config.upstream.sasl.password.reveal() == "from-env-123"
    assert "from-env-123" not in repr(config) and "from-env-123" not in str(config.upstream.sasl)
    (tmp_path / "secret.txt").write_text("from-file-456\n")
    config = load_config(write(tmp_path, UPSTREAM + "  sasl:\n    username: gw\n    password: {file: secret.txt}\n"))
    assert config.upstream.sasl.password.reveal() == "from-file-456"
    assert "from-file-456" not in repr(config)


@pytest.mark.parametrize("issuer,accepted", [
    ("http://127.0.0.1:9400", True),
    ("http://localhost:9400", True),
    ("http://[::1]:9400", True),
    ("http://127.evil.example/realms/x", False),  # a name that starts like a loopback address is not one
    ("http://idp.example.com", False),
    ("https://idp.example.com/realms/x", True),
])
def test_idp_urls_need_https_unless_loopback(tmp_path, issuer, accepted):
    text = UPSTREAM + f"auth:\n  oidc:\n    issuer: '{issuer}'\n    audience: streamward\n"
    if accepted:
        assert load_config(write(tmp_path, text)).auth.oidc.issuer == issuer.rstrip("/")
    else:
        with pytest.raises(ConfigError, match="must use https"):
            load_config(write(tmp_path, text))
