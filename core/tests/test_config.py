"""Settings read from the environment, written back to it for Granian's workers, and checked."""

from __future__ import annotations

import re

import msgspec
import pytest

from signalsmith.config import Settings


def test_settings_survive_the_trip_through_the_environment() -> None:
    # What `signalsmith serve --port ... --data-dir ...` hands its worker processes.
    settings = Settings(
        redis_url="unix:///tmp/x.sock",
        data_dir="/srv/signalsmith",
        port=9001,
        embedded_worker=True,
        admin_token="ssadm_x",
        public_url="https://collect.example.com",
        trusted_proxies=("10.0.0.0/8", "fd00::/8"),
        plugins_allow=("auth-writekey",),
        plugins_block=("warehouse-clickhouse",),
        plugin_modules=("my.plugin",),
        worker_retry_base_seconds=0.25,
    )
    env = settings.to_env()
    assert env["SIGNALSMITH_TRUSTED_PROXIES"] == "10.0.0.0/8,fd00::/8"
    assert env["SIGNALSMITH_LOAD_PLUGINS"] == "auth-writekey"
    assert "SIGNALSMITH_HOST" not in env  # defaults are left out
    assert Settings.from_env(env) == settings
    assert Settings.from_env(Settings().to_env()) == Settings()


def test_trusted_proxies_are_a_comma_separated_list() -> None:
    settings = Settings.from_env({"SIGNALSMITH_TRUSTED_PROXIES": " 10.0.0.5 , 172.16.0.0/12,"})
    assert settings.trusted_proxies == ("10.0.0.5", "172.16.0.0/12")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SIGNALSMITH_PUBLIC_URL": "collect.example.com"}, "must be an http(s) URL"),
        ({"SIGNALSMITH_PUBLIC_URL": "ftp://collect.example.com"}, "must be an http(s) URL"),
        ({"SIGNALSMITH_TRUSTED_PROXIES": "proxy.internal"}, "not an IP address or network"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(env: dict[str, str], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)) as raised:
        Settings.from_env(env)
    assert next(iter(env)) in str(raised.value)


def test_local_url_never_names_a_wildcard_address() -> None:
    assert Settings(host="0.0.0.0", port=8000).local_url == "http://127.0.0.1:8000"
    assert Settings(host="::1", port=8000).local_url == "http://[::1]:8000"
    assert Settings(host="collector.lan", port=80).local_url == "http://collector.lan:80"
