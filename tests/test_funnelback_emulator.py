"""The Funnelback emulator speaks the spec over HTTP, persists, injects faults and stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from rotator.testing.funnelback_emulator import FunnelbackEmulator, SeedToken

pytestmark = pytest.mark.timeout(30)

ADMIN = "emulator-admin-token-0123456789"
TOKENS = "/application-tokens/v1/clients/acme/application-token"
USER_TOKENS = "/application-tokens/v1/application-token"
ME = "/account/v1/current-user"


@pytest.fixture
def emu() -> Iterator[FunnelbackEmulator]:
    with FunnelbackEmulator(admin_token=ADMIN, clients=["acme", "other"],
                            users={"bob": "bob-password"}) as emulator:
        yield emulator


class Api:
    """Raw HTTP against the emulator, each call on a fresh connection."""

    def __init__(self, emu: FunnelbackEmulator, token: str | None = ADMIN) -> None:
        self.emu, self.token = emu, token

    def __call__(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"X-Security-Token": self.token} if self.token else {}
        headers["Connection"] = "close"
        return requests.request(method, self.emu.url + path, headers=headers, timeout=5, **kwargs)


@pytest.fixture
def api(emu: FunnelbackEmulator) -> Api:
    return Api(emu)


def control(emu: FunnelbackEmulator, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, emu.control_url + path, timeout=5, **kwargs)


# --- the API ----------------------------------------------------------------------------------------


def test_create_list_clone_revoke(api: Api, emu: FunnelbackEmulator) -> None:
    emu.add_token("acme", "live", roles=["client~primary"])
    created = api("PUT", f"{TOKENS}/fresh")
    assert created.status_code == 200
    data = created.json()["data"]
    assert data["name"] == "fresh" and data["clientId"] == "acme" and data["createdAt"].endswith("Z")
    assert data["token"] == emu.token_value("acme", "fresh") and len(data["token"]) >= 40
    assert api("PUT", f"{TOKENS}/fresh").status_code == 409

    clone = api("POST", f"{TOKENS}/live/clone", json={"name": "live-2"})
    assert clone.status_code == 200 and clone.json()["data"]["token"] == emu.token_value("acme", "live-2")
    assert api("POST", f"{TOKENS}/live/clone", json={"name": "live-2"}).status_code == 409
    assert api("POST", f"{TOKENS}/missing/clone", json={"name": "x"}).status_code == 404
    assert api("POST", f"{TOKENS}/live/clone", json={}).status_code == 400

    listing = api("GET", TOKENS)
    roles = {t["name"]: t["roles"] for t in listing.json()["data"]}
    assert roles == {"live": ["client~primary"], "fresh": [], "live-2": ["client~primary"]}
    for name in ("live", "fresh", "live-2"):
        assert emu.token_value("acme", name) not in listing.text
    assert all("token" not in t and "value" not in t for t in listing.json()["data"])

    assert api("DELETE", f"{TOKENS}/live").status_code == 200
    assert api("DELETE", f"{TOKENS}/live").status_code == 404
    assert api("GET", "/application-tokens/v1/clients/nope/application-token").status_code == 404


def test_current_user(api: Api, emu: FunnelbackEmulator) -> None:
    assert api("GET", ME).json() == {"data": {"name": "admin", "kind": "user", "clientId": None}}
    value = emu.add_token("acme", "app")
    assert Api(emu, value)("GET", ME).json()["data"] == {"name": "app", "kind": "application",
                                                         "clientId": "acme"}
    assert Api(emu, "unknown-token-value")("GET", ME).status_code == 401
    unauthenticated = Api(emu, None)("GET", ME)
    assert unauthenticated.status_code == 401 and unauthenticated.json()["errors"]


def test_login(emu: FunnelbackEmulator) -> None:
    url = emu.url + "/account/v1/login"
    good = requests.post(url, data={"username": "bob", "password": "bob-password"}, timeout=5)
    assert good.status_code == 200
    token = good.headers["X-Security-Token"]
    assert Api(emu, token)("GET", ME).json()["data"]["kind"] == "user"
    assert requests.post(url, data={"username": "bob", "password": "nope"}, timeout=5).status_code == 401
    assert requests.post(url, data={"username": "eve", "password": ""}, timeout=5).status_code == 401
    emu.stop()
    emu.start()  # login tokens do not survive a restart
    assert Api(emu, token)("GET", ME).status_code == 401


def test_permission_model(emu: FunnelbackEmulator) -> None:
    plain = Api(emu, emu.add_token("acme", "consumer", roles=["client~primary"]))
    assert plain("GET", ME).status_code == 200
    assert plain("GET", TOKENS).status_code == 403
    admin_app = Api(emu, emu.add_token("acme", "rotator", roles=["token-admin"]))
    assert admin_app("PUT", f"{TOKENS}/by-app").status_code == 200
    assert admin_app("GET", "/application-tokens/v1/clients/other/application-token").status_code == 403
    assert admin_app("GET", USER_TOKENS).status_code == 403


def test_user_tokens_are_scoped_to_the_user(api: Api, emu: FunnelbackEmulator) -> None:
    created = api("PUT", f"{USER_TOKENS}/mine").json()["data"]
    assert created["clientId"] is None
    login = requests.post(emu.url + "/account/v1/login",
                          data={"username": "bob", "password": "bob-password"}, timeout=5)
    bob = Api(emu, login.headers["X-Security-Token"])
    assert bob("GET", USER_TOKENS).json() == {"data": []}
    assert [t["name"] for t in api("GET", USER_TOKENS).json()["data"]] == ["mine"]
    user_app = Api(emu, created["token"])
    assert user_app("GET", ME).json()["data"]["name"] == "mine"
    assert user_app("GET", TOKENS).status_code == 200  # shares the admin's permissions
    assert api("DELETE", f"{USER_TOKENS}/mine").status_code == 200
    assert api("DELETE", f"{USER_TOKENS}/mine").status_code == 404


def test_unknown_paths_methods_and_bad_names(api: Api) -> None:
    assert api("GET", "/nope").status_code == 404
    assert api("PATCH", TOKENS).status_code == 501
    assert api("POST", TOKENS).status_code == 405
    assert api("PUT", f"{TOKENS}/bad%20name").status_code == 400
    assert requests.get(api.emu.base_url + "/elsewhere", timeout=5).status_code == 404


def test_token_fields_shape_the_answer(api: Api, emu: FunnelbackEmulator) -> None:
    emu.state.token_fields = ["token", "header"]
    answer = api("PUT", f"{TOKENS}/t")
    value = emu.token_value("acme", "t")
    assert answer.json()["token"] == value and "token" not in answer.json()["data"]
    assert answer.headers["X-Security-Token"] == value


def test_path_overrides(emu: FunnelbackEmulator) -> None:
    with FunnelbackEmulator(admin_token=ADMIN, paths={"current_user": "/me"}) as custom:
        assert Api(custom)("GET", "/me").status_code == 200
        assert Api(custom)("GET", ME).status_code == 404
    with pytest.raises(ValueError):
        FunnelbackEmulator(paths={"nonsense": "/x"})


# --- persistence ------------------------------------------------------------------------------------


def test_state_file_is_private_and_survives_restart(tmp_path: Path) -> None:
    state = tmp_path / "fb.json"
    seeds = [SeedToken("acme", "seeded", "seeded-value-0123456789abcdef")]
    with FunnelbackEmulator(admin_token=ADMIN, state_file=state, seed_tokens=seeds) as first:
        api = Api(first)
        new_value = api("PUT", f"{TOKENS}/made").json()["data"]["token"]
        assert api("DELETE", f"{TOKENS}/seeded").status_code == 200
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert list(tmp_path.iterdir()) == [state]  # no temp files left behind
    # Restarted with the same arguments: the seed is not resurrected, the created token is kept.
    with FunnelbackEmulator(admin_token=ADMIN, state_file=state, seed_tokens=seeds) as second:
        assert second.token_names("acme") == ["made"]
        assert Api(second, new_value)("GET", ME).json()["data"]["name"] == "made"


# --- faults -----------------------------------------------------------------------------------------


def test_status_fault_has_no_effect_and_counts_down(api: Api, emu: FunnelbackEmulator) -> None:
    fault = emu.faults.add(kind="status", status=503, retry_after=2, method="PUT", path="/x$", times=2)
    for _ in range(2):
        answer = api("PUT", f"{TOKENS}/x")
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "2"
        assert answer.json()["errors"]
    assert emu.token_names("acme") == [] and fault.hits == 2
    assert api("PUT", f"{TOKENS}/x").status_code == 200
    assert api("GET", TOKENS).status_code == 200  # path/method did not match


def test_fault_forever_and_clear(api: Api, emu: FunnelbackEmulator) -> None:
    emu.faults.add(kind="status", status=500, times=None)
    assert [api("GET", ME).status_code for _ in range(3)] == [500, 500, 500]
    assert emu.faults.clear() == 1
    assert api("GET", ME).status_code == 200


def test_lose_answer_performs_the_effect(api: Api, emu: FunnelbackEmulator) -> None:
    emu.add_token("acme", "live")
    emu.faults.add(kind="lose_answer", method="POST", path="/clone$")
    with pytest.raises(requests.ConnectionError):
        api("POST", f"{TOKENS}/live/clone", json={"name": "orphan"})
    assert sorted(emu.token_names("acme")) == ["live", "orphan"]


def test_reset_has_no_effect(api: Api, emu: FunnelbackEmulator) -> None:
    emu.faults.add(kind="reset", method="PUT")
    with pytest.raises(requests.ConnectionError):
        api("PUT", f"{TOKENS}/never")
    assert emu.token_names("acme") == []


def test_delay_and_delay_all(api: Api, emu: FunnelbackEmulator) -> None:
    emu.faults.add(kind="delay", delay_seconds=0.2, path="current-user")
    started = time.monotonic()
    assert api("GET", ME).status_code == 200
    assert time.monotonic() - started >= 0.2
    emu.delay_all_seconds = 0.1
    started = time.monotonic()
    api("GET", ME)
    assert time.monotonic() - started >= 0.1


def test_hang_never_answers_and_is_released_by_stop(emu: FunnelbackEmulator) -> None:
    emu.faults.add(kind="hang")
    with pytest.raises(requests.ReadTimeout):
        requests.get(emu.url + ME, headers={"X-Security-Token": ADMIN}, timeout=(1, 0.3))
    emu.faults.add(kind="hang")
    outcome: list[str] = []

    def call() -> None:
        try:
            requests.get(emu.url + ME, headers={"X-Security-Token": ADMIN}, timeout=10)
            outcome.append("answered")
        except requests.ConnectionError:
            outcome.append("dropped")

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 5
    while emu.calls("current_user") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    emu.stop()
    thread.join(5)
    assert outcome == ["dropped"] and time.monotonic() - started < 2


def test_hang_with_a_limit_then_drops(api: Api, emu: FunnelbackEmulator) -> None:
    emu.faults.add(kind="hang", delay_seconds=0.2)
    started = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        api("GET", ME)
    assert 0.2 <= time.monotonic() - started < 2


def test_counters_and_in_flight_gauge(emu: FunnelbackEmulator) -> None:
    emu.delay_all_seconds = 0.1
    threads = [threading.Thread(target=Api(emu), args=("GET", ME)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert emu.counters() == {f"GET {ME}": 6} and emu.calls("current_user") == 6
    assert emu.max_in_flight >= 2
    emu.reset_counters()
    assert emu.counters() == {} and emu.max_in_flight == 0


# --- control endpoints ------------------------------------------------------------------------------


def test_control_endpoints(api: Api, emu: FunnelbackEmulator) -> None:
    added = control(emu, "POST", "/faults", json=[
        {"method": "PUT", "path": "/f1$", "kind": "status", "status": 500},
        {"method": "*", "path": "current-user", "kind": "status", "status": 429, "times": 1}])
    assert added.status_code == 201 and added.json() == {"added": 2}
    assert len(control(emu, "GET", "/faults").json()) == 2
    assert api("PUT", f"{TOKENS}/f1").status_code == 500
    assert api("GET", ME).status_code == 429
    assert control(emu, "DELETE", "/faults").json() == {"cleared": 0}
    assert control(emu, "POST", "/faults", json={"kind": "explode"}).status_code == 400
    assert control(emu, "POST", "/faults", json={"kind": "status", "bogus": 1}).status_code == 400
    assert control(emu, "POST", "/faults", json={"kind": "status", "path": "("}).status_code == 400

    seeded = control(emu, "POST", "/tokens/acme/rot", json={"roles": ["token-admin"]})
    assert seeded.status_code == 201
    value = seeded.json()["value"]
    assert control(emu, "GET", "/tokens/acme/rot/value").json() == {"value": value}
    assert control(emu, "GET", "/tokens/acme/none/value").status_code == 404
    assert control(emu, "POST", "/tokens/acme/rot", json={"roles": []}).json() == {"value": value}
    assert Api(emu, value)("GET", TOKENS).status_code == 403  # roles updated in place

    state = control(emu, "GET", "/state").json()
    assert state["clients"]["acme"] == [{"name": "rot", "clientId": "acme", "createdAt": state["clients"]
                                         ["acme"][0]["createdAt"], "roles": []}]
    assert value not in json.dumps(state)
    assert state["counters"][f"GET {ME}"] == 1 and state["maxInFlight"] >= 1
    assert control(emu, "DELETE", "/counters").status_code == 200
    assert control(emu, "GET", "/state").json()["counters"] == {}

    assert control(emu, "POST", "/config", json={"delay_all_seconds": 0.01,
                                                 "token_fields": ["header"]}).status_code == 200
    assert emu.delay_all_seconds == 0.01
    assert "X-Security-Token" in api("PUT", f"{TOKENS}/hdr").headers
    assert control(emu, "POST", "/expire-logins").status_code == 200
    assert control(emu, "GET", "/unknown").status_code == 404


def test_stop_leaves_no_threads() -> None:
    before = set(threading.enumerate())
    emulator = FunnelbackEmulator(admin_token=ADMIN).start()
    session = requests.Session()  # a keep-alive connection holds a handler thread open
    assert session.get(emulator.url + ME, headers={"X-Security-Token": ADMIN}, timeout=5).ok
    emulator.faults.add(kind="hang")
    with pytest.raises(requests.ReadTimeout):
        requests.get(emulator.url + ME, headers={"X-Security-Token": ADMIN}, timeout=(1, 0.2))
    emulator.stop()
    emulator.stop()  # idempotent
    session.close()
    deadline = time.monotonic() + 2
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert set(threading.enumerate()) - before == set()


# --- as a process -----------------------------------------------------------------------------------


def _spawn(state: Path, *extra: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    env = {**os.environ, "FB_ADMIN": ADMIN, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rotator.testing.funnelback_emulator", "--port", "0", "--state-file",
         str(state), "--admin-token-env", "FB_ADMIN", "--client", "acme", *extra],
        stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, json.loads(line)


def test_runs_as_a_process_and_keeps_state_across_kill(tmp_path: Path) -> None:
    state = tmp_path / "fb.json"
    seed = ["--seed-token", "rotator=rotator-token-0123456789abcdef", "--token-roles", "rotator=token-admin",
            "--seed-token", "acme:live=live-token-0123456789abcdef"]
    proc, info = _spawn(state, *seed)
    try:
        assert info["url"].endswith("/admin-api") and "admin_token" not in info
        rotator_api = requests.Session()
        rotator_api.headers["X-Security-Token"] = "rotator-token-0123456789abcdef"
        clone = rotator_api.post(info["url"] + TOKENS + "/live/clone", json={"name": "live-2"}, timeout=5)
        assert clone.status_code == 200
        assert rotator_api.delete(info["url"] + TOKENS + "/live", timeout=5).status_code == 200
        rotator_api.close()
    finally:
        proc.kill()  # kill -9: no chance to save anything more
        proc.wait(5)
    proc, info = _spawn(state, *seed)
    try:
        names = requests.get(info["control_url"] + "/state", timeout=5).json()["clients"]["acme"]
        assert sorted(t["name"] for t in names) == ["live-2", "rotator"]
        assert requests.get(info["url"] + ME, headers={"X-Security-Token": clone.json()["data"]["token"]},
                            timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_process_prints_a_generated_admin_token(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "rotator.testing.funnelback_emulator",
                             "--user", "bob=pw-12345678"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        me = requests.get(info["url"] + ME, headers={"X-Security-Token": info["admin_token"]}, timeout=5)
        assert me.json()["data"]["name"] == "admin"
        login = requests.post(info["url"] + "/account/v1/login",
                              data={"username": "bob", "password": "pw-12345678"}, timeout=5)
        assert login.status_code == 200
    finally:
        proc.terminate()
        assert proc.wait(5) == 0
