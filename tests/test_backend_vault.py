"""VaultBackend / VaultDestination through hvac against the Vault emulator (real HTTP, no mocks)."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime

import hvac
import pytest

from rotator.backends import open_backend
from rotator.backends.base import DestinationState, JournalRecord, Payload
from rotator.backends.vault import VaultBackend, VaultDestination
from rotator.config import BackendSettings, parse_config
from rotator.errors import (
    BackendAuthError,
    BackendConflictError,
    BackendError,
    BackendPermissionError,
    BackendUnavailableError,
    ConfigError,
)
from rotator.secret import Secret
from rotator.testing.vault_emulator import VaultEmulator

ROOT = "hvs.root-token-for-tests"
OLD = "fb-old-token-value-0123456789"
NEW = "fb-new-token-value-9876543210"
WHEN = datetime(2026, 12, 4, 14, 52, tzinfo=UTC)
# What rotator needs on a destination path (see the module docstring of rotator.backends.vault).
ROTATOR_RULES = {"secret/data/apps/*": ["create", "read", "update"],
                 "secret/metadata/apps/*": ["read", "update", "delete"]}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def vault():
    with VaultEmulator(root_token=ROOT) as emulator:
        emulator.add_policy("rotator", ROTATOR_RULES)
        yield emulator


def backend(vault: VaultEmulator, auth: dict | None = None, *, clock=None, **options) -> VaultBackend:
    settings = BackendSettings(name="vault", type="vault",
                               options={"url": vault.url, "auth": auth or {"method": "token", "token_env": "T_VAULT"},
                                        **options})
    return VaultBackend(settings, clock=clock)


@pytest.fixture
def root_env(monkeypatch):
    monkeypatch.setenv("T_VAULT", ROOT)


@pytest.fixture
def rotator_token(vault, monkeypatch):
    token = vault.create_token(policies=["rotator"], ttl=3600)
    monkeypatch.setenv("T_VAULT", token)
    return token


def payload(token: str = NEW, name: str = "search-frontend-20261204T145200Z", **extra) -> Payload:
    return Payload(token=Secret(token), token_name=name, client_id="acme", rotated_at=WHEN, extra=extra)


def rotate(dest: VaultDestination, token: str = NEW) -> None:
    state = dest.read()
    base = state.current.payload or payload(OLD, "search-frontend")
    new = base.successor(token=Secret(token), token_name="search-frontend-20261204T145200Z", client_id="acme",
                         rotated_at=WHEN)
    state = dest.write_pending(new, state)
    dest.promote(new, state)


# --- auth methods ---------------------------------------------------------------------------------


def test_registry_opens_vault_backend_from_config(vault, root_env):
    config = parse_config(f"""
[funnelback]
url = "https://fb.example"
token_env = "FB"
[backends.v]
type = "vault"
url = "{vault.url}"
auth = {{ method = "token", token_env = "T_VAULT" }}
[[targets]]
name = "t"
client_id = "acme"
token_name = "search-frontend"
destinations = [{{ backend = "v", path = "apps/t" }}]
""")
    opened = open_backend(config.backends["v"])
    assert isinstance(opened, VaultBackend)
    assert [c.ok for c in opened.check()] == [True, True]
    opened.close()


def test_token_auth_from_env_and_file(vault, rotator_token, tmp_path):
    rotate(backend(vault).destination({"path": "apps/a"}, target="t"))
    assert vault.read_secret("apps/a")["token"] == NEW
    token_file = tmp_path / "token"
    token_file.write_text(rotator_token + "\n")
    b = backend(vault, {"method": "token", "token_file": str(token_file)})
    assert b.destination({"path": "apps/a"}, target="t").read().current.payload.token == Secret(NEW)


def test_approle_auth_with_references_and_custom_mount(vault, monkeypatch, tmp_path):
    role_id, secret_id = vault.add_approle("rotator", policies=["rotator"], token_ttl=600, mount="team-approle")
    monkeypatch.setenv("T_SECRET_ID", secret_id)
    (tmp_path / "role_id").write_text(role_id)
    b = backend(vault, {"method": "approle", "role_id_file": str(tmp_path / "role_id"),
                        "secret_id_env": "T_SECRET_ID", "mount": "team-approle"})
    rotate(b.destination({"path": "apps/approle"}, target="t"))
    assert vault.read_secret("apps/approle")["token"] == NEW
    assert len(vault.calls("POST", r"^auth/team-approle/login$")) == 1
    literal = backend(vault, {"method": "approle", "role_id": role_id, "secret_id_env": "T_SECRET_ID",
                              "mount": "team-approle"})
    assert all(c.ok for c in literal.check())


def test_kubernetes_auth_reads_jwt_file(vault, tmp_path):
    jwt = "eyJhbGciOiJSUzI1NiJ9.service-account.signature"
    vault.add_kubernetes_role("rotator", jwts=[jwt], policies=["rotator"], mount="k8s-prod")
    (tmp_path / "jwt").write_text(jwt + "\n")
    b = backend(vault, {"method": "kubernetes", "role": "rotator", "jwt_file": str(tmp_path / "jwt"),
                        "mount": "k8s-prod"})
    rotate(b.destination({"path": "apps/k8s"}, target="t"))
    assert vault.read_secret("apps/k8s")["token"] == NEW


def test_login_failures_are_auth_errors_without_secrets(vault, monkeypatch, tmp_path):
    role_id, _ = vault.add_approle("rotator", policies=["rotator"])
    monkeypatch.setenv("T_SECRET_ID", "wrong-secret-id-0123456789")
    b = backend(vault, {"method": "approle", "role_id": role_id, "secret_id_env": "T_SECRET_ID"})
    with pytest.raises(BackendAuthError) as info:
        b.destination({"path": "apps/x"}, target="t").read()
    assert "invalid role or secret ID" in str(info.value)
    assert "wrong-secret-id" not in info.value.one_line() and role_id not in info.value.one_line()

    jwt = "eyJ.not-accepted.jwt-signature-part"
    vault.add_kubernetes_role("rotator", jwts=["eyJ.other"], policies=["rotator"])
    (tmp_path / "jwt").write_text(jwt)
    k8s = backend(vault, {"method": "kubernetes", "role": "rotator", "jwt_file": str(tmp_path / "jwt")})
    with pytest.raises(BackendAuthError) as info:
        k8s.destination({"path": "apps/x"}, target="t").read()
    assert jwt not in info.value.one_line()
    missing = backend(vault, {"method": "kubernetes", "role": "rotator", "jwt_file": str(tmp_path / "absent")})
    with pytest.raises(BackendAuthError, match="service-account token"):
        missing.destination({"path": "apps/x"}, target="t").read()

    monkeypatch.delenv("T_VAULT", raising=False)
    with pytest.raises(BackendAuthError, match="T_VAULT"):
        backend(vault).destination({"path": "apps/x"}, target="t").read()
    monkeypatch.setenv("T_VAULT", "hvs.revoked-or-never-issued-token")
    with pytest.raises(BackendAuthError) as info:
        backend(vault).destination({"path": "apps/x"}, target="t").read()
    assert "hvs.revoked" not in info.value.one_line()
    checks = backend(vault).check()
    assert checks[0].ok and not checks[1].ok


# --- renewal and re-login -------------------------------------------------------------------------


def test_relogin_after_token_expiry_and_retry(vault, monkeypatch):
    role_id, secret_id = vault.add_approle("rotator", policies=["rotator"], token_ttl=60)
    monkeypatch.setenv("T_SECRET_ID", secret_id)
    b = backend(vault, {"method": "approle", "role_id": role_id, "secret_id_env": "T_SECRET_ID"})
    dest = b.destination({"path": "apps/relogin"}, target="t")
    dest.read()
    vault.advance(120)                        # the token expired on Vault; the backend's clock did not move
    rotate(dest)
    assert vault.read_secret("apps/relogin")["token"] == NEW
    assert len(vault.calls("POST", r"^auth/approle/login$")) == 2
    assert any(c["status"] == 403 for c in vault.calls(path=r"^secret/"))


def test_renew_self_past_two_thirds_then_relogin_at_max_ttl(vault, monkeypatch):
    role_id, secret_id = vault.add_approle("rotator", policies=["rotator"], token_ttl=300, token_max_ttl=500)
    monkeypatch.setenv("T_SECRET_ID", secret_id)
    clock = Clock()
    b = backend(vault, {"method": "approle", "role_id": role_id, "secret_id_env": "T_SECRET_ID"}, clock=clock)
    dest = b.destination({"path": "apps/renew"}, target="t")
    dest.read()
    clock.now += 150                          # < 2/3 of 300: nothing to do
    vault.advance(150)
    dest.read()
    assert not vault.calls("POST", r"renew-self$")
    clock.now += 60                           # 210 s > 200 s: renew
    vault.advance(60)
    dest.read()
    assert len(vault.calls("POST", r"renew-self$")) == 1
    assert len(vault.calls("POST", r"^auth/approle/login$")) == 1
    clock.now += 250                          # past 2/3 again; max TTL leaves 40 s < 300/3: log in again
    vault.advance(250)
    dest.read()
    assert len(vault.calls("POST", r"renew-self$")) == 2
    assert len(vault.calls("POST", r"^auth/approle/login$")) == 2


def test_token_auth_rereads_reference_on_403(vault, monkeypatch):
    first = vault.create_token(policies=["rotator"], ttl=3600)
    monkeypatch.setenv("T_VAULT", first)
    dest = backend(vault).destination({"path": "apps/reread"}, target="t")
    dest.read()
    vault.revoke_token(first)
    monkeypatch.setenv("T_VAULT", vault.create_token(policies=["rotator"], ttl=3600))   # e.g. Vault Agent rewrote it
    rotate(dest)
    assert vault.read_secret("apps/reread")["token"] == NEW
    vault.revoke_token(os.environ["T_VAULT"])                        # revoked, and nothing new to read
    with pytest.raises(BackendAuthError, match="rejected"):
        dest.read()


def test_32_threads_share_one_client_and_relogin_once(vault, monkeypatch):
    role_id, secret_id = vault.add_approle("rotator", policies=["rotator"], token_ttl=60)
    monkeypatch.setenv("T_SECRET_ID", secret_id)
    b = backend(vault, {"method": "approle", "role_id": role_id, "secret_id_env": "T_SECRET_ID"})
    dests = [b.destination({"path": f"apps/t{i}"}, target=f"t{i}") for i in range(32)]
    dests[0].read()
    vault.advance(120)
    barrier = threading.Barrier(32)
    errors: list[BaseException] = []

    def work(dest: VaultDestination) -> None:
        try:
            barrier.wait()
            rotate(dest)
        except BaseException as exc:   # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(d,)) for d in dests]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(vault.read_secret(f"apps/t{i}")["token"] == NEW for i in range(32))
    assert len(vault.calls("POST", r"^auth/approle/login$")) == 2


# --- the slots: pending, promote, journal ---------------------------------------------------------


def test_pending_is_a_sibling_not_visible_at_path(vault, rotator_token):
    vault.write_secret("apps/p", {"token": OLD, "token_name": "search-frontend"})
    dest = backend(vault).destination({"path": "apps/p"}, target="t")
    state = dest.read()
    assert state.current.version == "1" and state.pending == type(state.pending)()
    state = dest.write_pending(payload(), state)
    assert vault.read_secret("apps/p")["token"] == OLD                 # consumers still see the old one
    assert vault.read_metadata("apps/p")["current_version"] == 1
    assert vault.read_secret("apps/p.rotator-pending")["token"] == NEW
    again = dest.read()
    assert again.pending.payload.token == Secret(NEW) and again.current.payload.token == Secret(OLD)
    assert dest.write_pending(payload(), again) == again              # same payload: no-op
    assert vault.read_metadata("apps/p.rotator-pending")["current_version"] == 1
    dest.promote(payload(), again)
    assert vault.read_secret("apps/p")["token"] == NEW
    assert vault.read_metadata("apps/p.rotator-pending") is None      # destroyed, not just deleted
    dest.discard_pending(dest.read())                                 # idempotent


def test_write_pending_cas_conflict(vault, rotator_token):
    one = backend(vault).destination({"path": "apps/race"}, target="t")
    two = backend(vault).destination({"path": "apps/race"}, target="t")
    state_one, state_two = one.read(), two.read()
    one.write_pending(payload(NEW), state_one)
    with pytest.raises(BackendConflictError) as info:
        two.write_pending(payload("fb-other-token-value-555555"), state_two)
    assert "check-and-set" in str(info.value) and NEW not in info.value.one_line()
    assert two.write_pending(payload(NEW), state_two).pending.payload.token == Secret(NEW)   # same content


def test_promote_cas_conflict_never_overwrites(vault, rotator_token):
    vault.write_secret("apps/c", {"token": OLD})
    dest = backend(vault).destination({"path": "apps/c"}, target="t")
    state = dest.write_pending(payload(), dest.read())
    vault.write_secret("apps/c", {"token": "hand-edited-token-value-77"})   # someone else wrote
    with pytest.raises(BackendConflictError):
        dest.promote(payload(), state)
    assert vault.read_secret("apps/c") == {"token": "hand-edited-token-value-77"}
    assert vault.read_secret("apps/c.rotator-pending")["token"] == NEW     # pending kept for resume


def test_promote_is_idempotent_after_lost_answer(vault, rotator_token):
    vault.write_secret("apps/lost", {"token": OLD})
    dest = backend(vault).destination({"path": "apps/lost"}, target="t")
    state = dest.write_pending(payload(), dest.read())
    vault.faults.add(kind="lose_answer", method="POST", path=r"/v1/secret/data/apps/lost$")
    with pytest.raises(BackendUnavailableError):
        dest.promote(payload(), state)
    assert vault.read_secret("apps/lost")["token"] == NEW               # it happened; the answer was lost
    dest.promote(payload(), state)                                       # stale state: cas conflict -> same token
    dest.promote(payload(), dest.read())
    assert vault.read_metadata("apps/lost")["current_version"] == 2
    assert vault.read_metadata("apps/lost.rotator-pending") is None


def test_user_extra_keys_and_custom_metadata_are_kept(vault, rotator_token):
    vault.write_secret("apps/u", {"token": OLD, "token_name": "search-frontend", "endpoint": "https://fb"})
    hvac_root = hvac.Client(url=vault.url, token=ROOT)
    hvac_root.secrets.kv.v2.update_metadata("apps/u", custom_metadata={"owner": "team-search"},
                                            delete_version_after="0s")
    rotate(backend(vault).destination({"path": "apps/u"}, target="t"))
    assert vault.read_secret("apps/u") == {"token": NEW, "token_name": "search-frontend-20261204T145200Z",
                                           "client_id": "acme", "rotated_at": "2026-12-04T14:52:00Z",
                                           "endpoint": "https://fb"}
    custom = vault.read_metadata("apps/u")["custom_metadata"]
    assert custom["owner"] == "team-search" and custom["managed_by"] == "rotator"
    assert custom["token_name"] == "search-frontend-20261204T145200Z" and custom["rotated_at"] == "2026-12-04T14:52:00Z"
    assert custom["rotator_version"]


def test_soft_deleted_current_reads_empty_but_keeps_version(vault, rotator_token):
    vault.write_secret("apps/sd", {"token": OLD})
    vault.write_secret("apps/sd", {"token": OLD + "x"})
    hvac_root = hvac.Client(url=vault.url, token=ROOT)
    hvac_root.secrets.kv.v2.delete_latest_version_of_secret("apps/sd")
    dest = backend(vault).destination({"path": "apps/sd"}, target="t")
    state = dest.read()
    assert state.exists and state.current.payload is None and state.current.version == "2"
    state = dest.write_pending(payload(), state)
    dest.promote(payload(), state)
    assert vault.read_secret("apps/sd")["token"] == NEW and vault.read_metadata("apps/sd")["current_version"] == 3


def test_new_secret_and_cas_required_mount(vault, rotator_token):
    vault.add_mount("strict", cas_required=True)
    vault.add_policy("rotator", {**ROTATOR_RULES, "strict/data/apps/*": ["create", "read", "update"],
                                 "strict/metadata/apps/*": ["read", "update", "delete"]})
    dest = backend(vault).destination({"path": "apps/n", "mount": "strict"}, target="t")
    state = dest.read()
    assert state.exists is False and state.current.version is None
    rotate(dest)
    assert vault.read_secret("apps/n", mount="strict")["token"] == NEW


def test_journal_cas(vault, rotator_token):
    home = backend(vault).destination({"path": "apps/j"}, target="t")
    other = backend(vault).destination({"path": "apps/j"}, target="t")
    empty = home.read_journal()
    assert empty == JournalRecord.empty()
    first = home.write_journal({"lease": {"owner": "a", "expires": 1}}, empty)
    assert first.version == "1"
    with pytest.raises(BackendConflictError):
        other.write_journal({"lease": {"owner": "b", "expires": 2}}, empty)
    assert home.write_journal({"lease": {"owner": "a", "expires": 1}}, empty) == first   # lost answer, same data
    second = other.write_journal({"lease": {"owner": "b", "expires": 2}}, other.read_journal())
    assert second.version == "2" and home.read_journal() == second
    assert vault.read_secret("apps/j.rotator-journal") == {"lease": {"owner": "b", "expires": 2}}
    assert vault.read_secret("apps/j") is None                           # the journal never touches `path`


def test_journal_suffix_option(vault, rotator_token):
    dest = backend(vault, journal_suffix=".rot").destination({"path": "apps/s"}, target="t")
    dest.write_journal({"x": 1}, dest.read_journal())
    dest.write_pending(payload(), dest.read())
    assert vault.list_keys() == ["apps/s.rot-journal", "apps/s.rot-pending"]


# --- refusals and failures --------------------------------------------------------------------------


def test_write_denied_is_permission_error_with_policy_hint(vault, monkeypatch):
    vault.write_secret("apps/ro", {"token": OLD})
    vault.add_policy("reader", {"secret/data/apps/*": ["read"], "secret/metadata/apps/*": ["read"]})
    monkeypatch.setenv("T_VAULT", vault.create_token(policies=["reader"]))
    dest = backend(vault).destination({"path": "apps/ro"}, target="t")
    state = dest.read()
    with pytest.raises(BackendPermissionError) as info:
        dest.write_pending(payload(), state)
    text = info.value.one_line()
    assert text.startswith("vault:apps/ro write pending: permission denied")
    assert 'secret/data/apps/ro*' in text and NEW not in text
    assert vault.read_secret("apps/ro") == {"token": OLD}
    checks = dest.check(write=True)
    assert checks[0].ok and not checks[1].ok and "create" in checks[1].detail


def test_read_denied_and_check(vault, monkeypatch):
    vault.add_policy("nothing", {"secret/data/other/*": ["read"]})
    monkeypatch.setenv("T_VAULT", vault.create_token(policies=["nothing"]))
    dest = backend(vault).destination({"path": "apps/x"}, target="t")
    with pytest.raises(BackendPermissionError):
        dest.read()
    [result] = dest.check(write=True)
    assert not result.ok and result.detail.startswith("read denied")


def test_check_write_ok_never_writes(vault, rotator_token):
    dest = backend(vault).destination({"path": "apps/chk"}, target="t")
    writes_before = len(vault.calls("POST", r"^secret/"))
    results = dest.check(write=True)
    assert [r.ok for r in results] == [True, True] and "nothing written" in results[1].detail
    assert len(vault.calls("POST", r"^secret/")) == writes_before
    assert vault.list_keys() == []


def test_metadata_not_permitted_still_promotes_and_tombstones_pending(vault, monkeypatch):
    vault.add_policy("data-only", {"secret/data/apps/*": ["create", "read", "update"],
                                   "secret/metadata/apps/*": ["read"]})
    monkeypatch.setenv("T_VAULT", vault.create_token(policies=["data-only"]))
    vault.write_secret("apps/m", {"token": OLD})
    dest = backend(vault).destination({"path": "apps/m"}, target="t")
    rotate(dest)
    assert vault.read_secret("apps/m")["token"] == NEW
    assert vault.read_secret("apps/m.rotator-pending") == {}            # tombstone: slot reads empty
    assert dest.read().pending.payload is None
    assert "warning" in dest.check(write=True)[1].detail


def test_sealed_vault_is_unavailable(vault, rotator_token):
    b = backend(vault)
    dest = b.destination({"path": "apps/sealed"}, target="t")
    dest.read()
    vault.seal()
    with pytest.raises(BackendUnavailableError, match="sealed"):
        dest.read()
    health = b.check()
    assert len(health) == 1 and not health[0].ok and "sealed" in health[0].detail
    vault.unseal()
    assert all(r.ok for r in b.check())


def test_unreachable_and_hanging_vault(vault, rotator_token):
    vault.faults.add(kind="hang", path=r"/v1/secret/data/apps/slow$")
    dest = backend(vault, timeout=0.3).destination({"path": "apps/slow"}, target="t")
    with pytest.raises(BackendUnavailableError, match="within 0.3s"):
        dest.read()
    vault.faults.add(kind="status", status=500, path=r"/v1/secret/")
    with pytest.raises(BackendUnavailableError):
        dest.read()
    settings = BackendSettings(name="gone", type="vault",
                               options={"url": "http://127.0.0.1:9", "auth": {"method": "token", "token_env": "T_VAULT"}})
    gone = VaultBackend(settings)
    with pytest.raises(BackendUnavailableError, match="cannot reach"):
        gone.destination({"path": "apps/x"}, target="t").read()
    assert not gone.check()[0].ok


def test_kv_v1_best_effort(vault, rotator_token):
    vault.add_mount("kv", version=1)
    vault.add_policy("rotator", {"kv/apps/*": ["create", "read", "update", "delete"]})
    vault.write_secret("apps/v1", {"token": OLD, "team": "search"}, mount="kv")
    dest = backend(vault, mount="kv", kv_version=1).destination({"path": "apps/v1"}, target="t")
    state = dest.read()
    assert state.current.payload.token == Secret(OLD) and state.current.version.startswith("sha256:")
    assert OLD not in state.current.version
    new = state.current.payload.successor(token=Secret(NEW), token_name="gen-2", client_id="acme", rotated_at=WHEN)
    state = dest.write_pending(new, state)
    assert vault.read_secret("apps/v1", mount="kv")["token"] == OLD
    dest.promote(new, state)
    assert vault.read_secret("apps/v1", mount="kv") == {"token": NEW, "token_name": "gen-2", "client_id": "acme",
                                                        "rotated_at": "2026-12-04T14:52:00Z", "team": "search"}
    assert vault.read_secret("apps/v1.rotator-pending", mount="kv") is None
    stale = state
    vault.write_secret("apps/v1", {"token": "hand-edited-token-value-77"}, mount="kv")
    with pytest.raises(BackendConflictError, match="KV v1"):
        dest.promote(payload("fb-third-token-value-333333"), stale)
    journal = dest.write_journal({"a": 1}, dest.read_journal())
    with pytest.raises(BackendConflictError):
        dest.write_journal({"a": 2}, JournalRecord.empty())
    assert dest.read_journal() == journal
    results = dest.check(write=True)
    assert all(r.ok for r in results) and "no check-and-set" in results[-1].detail


def test_namespace_header(vault, monkeypatch):
    vault.add_namespace("team", kv_mounts={})
    vault.add_namespace("team/search")
    vault.add_policy("rotator", ROTATOR_RULES, namespace="team/search")
    monkeypatch.setenv("T_VAULT", vault.create_token(policies=["rotator"], namespace="team/search"))
    b = backend(vault, namespace="team/search")
    rotate(b.destination({"path": "apps/ns"}, target="t"))
    assert vault.read_secret("apps/ns", namespace="team/search")["token"] == NEW
    assert vault.read_secret("apps/ns") is None
    assert {c["namespace"] for c in vault.calls(path=r"^secret/")} == {"team/search"}
    assert all(r.ok for r in b.check())                # sys/health asked without the namespace header


def test_bad_path_is_config_error(vault, root_env):
    with pytest.raises(ConfigError):
        backend(vault).destination({"path": "apps/../x"}, target="t")


def test_error_strings_and_reprs_hold_no_secrets(vault, monkeypatch):
    role_id, secret_id = vault.add_approle("rotator", policies=["rotator"], token_ttl=60)
    monkeypatch.setenv("T_SECRET_ID", secret_id)
    b = backend(vault, {"method": "approle", "role_id": role_id, "secret_id_env": "T_SECRET_ID"})
    dest = b.destination({"path": "apps/leak"}, target="t")
    vault.write_secret("apps/leak", {"token": OLD})
    state = dest.write_pending(payload(), dest.read())
    messages = [repr(b), repr(dest), repr(state), str(state)]
    vault.write_secret("apps/leak", {"token": "hand-edited-token-value-77"})
    vault.faults.add(kind="status", status=403, path=r"/v1/secret/data/apps/leak\.rotator-pending$",
                     errors=["1 error occurred:\n\t* permission denied\n\n"])
    for action in (lambda: dest.promote(payload(), state),
                   lambda: dest.write_pending(payload("fb-other-token-value-555555"), state)):
        with pytest.raises(BackendError) as info:
            action()
        messages += [str(info.value), info.value.one_line(), repr(info.value)]
    tokens = [t for t, info in vault._state["tokens"].items()]
    for text in messages:
        for secret in (OLD, NEW, secret_id, *tokens):
            assert secret not in text, text


def test_pending_of_another_token_is_never_destroyed(vault, rotator_token):
    dest = backend(vault).destination({"path": "apps/guard"}, target="t")
    state = dest.write_pending(payload(), dest.read())
    other = {"token": "fb-other-rotation-token-4242", "token_name": "x"}
    vault.write_secret("apps/guard.rotator-pending", other)          # another rotation's pending value
    with pytest.raises(BackendConflictError, match="another token"):
        dest.discard_pending(state)
    with pytest.raises(BackendConflictError):
        dest.discard_pending(DestinationState())                     # "empty" per a stale read
    with pytest.raises(BackendConflictError):
        dest.promote(payload(), state)
    assert vault.read_secret("apps/guard.rotator-pending") == other
    dest.discard_pending(dest.read())                                # a fresh read may discard it
    assert vault.read_metadata("apps/guard.rotator-pending") is None


def test_tls_options_reach_the_session(vault, root_env, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not used over http")
    assert backend(vault, ca_cert=str(ca))._session.verify == str(ca)
    unverified = backend(vault, verify=False)
    assert unverified._session.verify is False
    assert all(r.ok for r in unverified.check())
