"""Config loading: every error is a ConfigError naming the file, the key and a fix."""

from __future__ import annotations

import textwrap

import pytest

from rotator.cli import main
from rotator.config import load_config, parse_config
from rotator.durations import format_duration, parse_duration
from rotator.errors import ConfigError, SecretReferenceError

BASE = """
[funnelback]
url = "https://fb.example.com:8443/admin-api"
token_env = "FB_TOKEN"

[backends.aws]
type = "aws-secrets-manager"
region = "us-east-1"

[backends.vault]
type = "vault"
url = "https://vault.example.com:8200"
auth = { method = "token", token_env = "VAULT_TOKEN" }

[defaults]
interval = "30d"

[[targets]]
name = "web"
client_id = "acme"
token_name = "web"
grace_period = "15m"
destinations = [{ backend = "aws", secret_id = "prod/web" }, { backend = "vault", path = "apps/web" }]
"""


def test_minimal_config_loads_with_defaults() -> None:
    config = parse_config(BASE, "rotation.toml")
    target = config.target("web")
    assert target.interval == 30 * 86400
    assert target.grace_period == 900
    assert [d.label() for d in target.destinations] == ["aws:prod/web", "vault:apps/web"]
    assert config.service.listen == "0.0.0.0:9464"
    assert config.backend_types_in_use() == {"aws-secrets-manager", "vault"}


def test_service_poll_interval() -> None:
    from rotator.daemon import poll_period

    assert parse_config(BASE, "rotation.toml").service.poll_interval == 60
    config = parse_config(BASE + '\n[service]\npoll_interval = "15m"\n', "rotation.toml")
    assert config.service.poll_interval == 900
    # the poll is interval / 10, at most poll_interval, at least 1 s
    assert poll_period(config.target("web"), config.service.poll_interval) == 900
    assert poll_period(config.target("web"), 60) == 60
    with pytest.raises(ConfigError, match="service.poll_interval"):
        parse_config(BASE + '\n[service]\npoll_interval = "soon"\n', "rotation.toml")


def test_example_config_is_valid() -> None:
    config = load_config("rotation.example.toml")
    assert config.targets[0].name == "search-frontend"


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000),
                                          ("1h30m", 5400), ("250ms", 0.25), ("2w", 1209600)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "d", "1x", "1h 30x", "-5s", "5 s s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration() -> None:
    assert format_duration(5400) == "1h30m"
    assert format_duration(2592000) == "30d"


# (change to BASE, key expected in the message, fragment of the message or hint)
BROKEN = [
    (("[funnelback]", "[funnelback]\nbogus = 1"), "funnelback.bogus", "unknown key"),
    (('token_name = "web"', 'token_name = "web"\ngrace_periood = "1m"'), "grace_periood", "grace_period"),
    (('type = "vault"', 'type = "hashicorp"'), "backends.vault.type", "unknown backend type"),
    (('backend = "aws"', 'backend = "gcp"'), "destinations[0].backend", "undefined backend"),
    (('interval = "30d"', 'interval = "30 days"'), "interval", "not a duration"),
    (('client_id = "acme"\n', ''), "client_id", "missing required key"),
    (('url = "https://fb.example.com:8443/admin-api"\n', ''), "funnelback.url", "missing required key"),
    (('token_env = "FB_TOKEN"', 'token = "abc"'), "funnelback.token", "secrets may not be written"),
    (('token_env = "FB_TOKEN"', 'username = "me"\npassword = "hunter2"'), "funnelback.password",
     "secrets may not be written"),
    (('token_env = "FB_TOKEN"', 'username = "me"'), "funnelback.password_env", "password_env or password_file"),
    (('token_env = "FB_TOKEN"', ''), "funnelback.token_env", "no credential"),
    (('token_env = "VAULT_TOKEN" }', 'token_env = "VAULT_TOKEN", token_file = "/x" }'), "auth.token_file",
     "both set"),
    (('method = "token"', 'method = "ldap"'), "auth.method", "unknown auth method"),
    (('grace_period = "15m"', 'grace_period = "40d"'), "grace_period", "shorter than interval"),
    (('name = "web"', 'name = "web site"'), "name", "not allowed"),
    (('secret_id = "prod/web"', 'path = "prod/web"'), "destinations[0]", "unknown key"),
    (('destinations = [', 'destinations = []\nx = ['), "targets[web]", "unknown key"),
    (('url = "https://vault.example.com:8200"', 'url = "vault:8200"'), "backends.vault.url", "not allowed"),
    (('[defaults]', '[defaults]\nintervall = "1d"'), "defaults.intervall", "interval"),
]


@pytest.mark.parametrize("change,key,fragment", BROKEN, ids=[b[1] for b in BROKEN])
def test_config_errors_name_file_key_and_fix(change: tuple[str, str], key: str, fragment: str) -> None:
    old, new = change
    assert old in BASE
    with pytest.raises(ConfigError) as info:
        parse_config(BASE.replace(old, new, 1), "conf/rotation.toml")
    message = info.value.one_line()
    assert message.startswith("conf/rotation.toml: ")
    assert key in message
    assert fragment in message


def test_duplicate_target_and_destination() -> None:
    twice = BASE + textwrap.dedent("""
        [[targets]]
        name = "web"
        client_id = "acme"
        token_name = "other"
        destinations = [{ backend = "aws", secret_id = "prod/other" }]
    """)
    with pytest.raises(ConfigError, match="duplicate target name"):
        parse_config(twice)
    shared = twice.replace('name = "web"\nclient_id = "acme"\ntoken_name = "other"',
                           'name = "web2"\nclient_id = "acme"\ntoken_name = "other"').replace(
        'secret_id = "prod/other"', 'secret_id = "prod/web"')
    with pytest.raises(ConfigError, match="also a destination of target 'web'"):
        parse_config(shared)


def test_invalid_toml() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("[funnelback\nurl=", "x.toml")


def test_missing_file_hint(tmp_path) -> None:
    with pytest.raises(ConfigError, match="config file not found") as info:
        load_config(tmp_path / "nope.toml")
    assert "ROTATOR_CONFIG" in info.value.one_line()


def test_config_env_default(tmp_path, monkeypatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text(BASE)
    monkeypatch.setenv("ROTATOR_CONFIG", str(path))
    assert load_config().path == str(path)


def test_secret_reference_resolution(tmp_path, monkeypatch) -> None:
    config = parse_config(BASE)
    monkeypatch.delenv("FB_TOKEN", raising=False)
    with pytest.raises(SecretReferenceError, match="FB_TOKEN"):
        config.funnelback.resolve_token()
    monkeypatch.setenv("FB_TOKEN", "a-secret-token-value")
    assert config.funnelback.resolve_token().reveal() == "a-secret-token-value"
    secret_file = tmp_path / "fb"
    secret_file.write_text("from-a-file-value\n")
    filed = parse_config(BASE.replace('token_env = "FB_TOKEN"', f'token_file = "{secret_file}"'))
    assert filed.funnelback.resolve_token().reveal() == "from-a-file-value"
    assert "from-a-file-value" not in repr(filed.funnelback.resolve_token())


def test_cli_exit_code_2_on_config_error(tmp_path, capsys) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BASE.replace('interval = "30d"', 'interval = "soon"'))
    assert main(["status", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and str(path) in err and "interval" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_cli_usage_errors(tmp_path, capsys) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(BASE)
    assert main(["rotate", "--config", str(path)]) == 2
    assert main(["rotate", "--config", str(path), "nosuch"]) == 2
    assert "no target named 'nosuch'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_relative_secret_file_resolves_in_systemd_credentials_directory(tmp_path, monkeypatch) -> None:
    (tmp_path / "funnelback-token").write_text("credential-from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = parse_config(BASE.replace('token_env = "FB_TOKEN"', 'token_file = "funnelback-token"'))
    assert config.funnelback.resolve_token().reveal() == "credential-from-systemd"
