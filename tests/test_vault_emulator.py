"""Fidelity of the Vault emulator, driven through hvac over a real socket.

`KvFidelity` holds assertions written from Vault's API documentation; it runs against the emulator
always and against a real Vault (``-m vault_real``, with VAULT_ADDR and VAULT_TOKEN set) so any
drift between the two shows up as a failing test on the real side.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import subprocess
import sys
import threading
import time

import hvac
import hvac.exceptions as hx
import pytest
import requests

from rotator.testing.vault_emulator import (
    INVALID_TOKEN,
    PERMISSION_DENIED,
    VaultEmulator,
    capabilities_for,
)

RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")


@pytest.fixture
def vault():
    with VaultEmulator(root_token="root-token") as emulator:
        yield emulator


@pytest.fixture
def root(vault):
    return hvac.Client(url=vault.url, token=vault.root_token, timeout=5)


def client_for(url: str, token: str | None = "", namespace: str | None = None, timeout: float = 5) -> hvac.Client:
    return hvac.Client(url=url, token=token, namespace=namespace, timeout=timeout)


def read(client: hvac.Client, path: str, mount: str, **kwargs):
    return client.secrets.kv.v2.read_secret_version(path=path, mount_point=mount, raise_on_deleted_version=True,
                                                    **kwargs)


# --- shared with the real-Vault run ------------------------------------------------------------


class KvFidelity:
    """Assertions that must hold for the emulator and for a real Vault. Needs fixtures `kv`
    (a root hvac client) and `mount` (a fresh KV v2 mount)."""

    def test_write_read_versions(self, kv, mount):
        first = kv.secrets.kv.v2.create_or_update_secret("app/one", {"token": "a"}, cas=0, mount_point=mount)
        assert first["data"]["version"] == 1
        assert first["data"]["deletion_time"] == "" and first["data"]["destroyed"] is False
        assert RFC3339_NANO.match(first["data"]["created_time"])
        kv.secrets.kv.v2.create_or_update_secret("app/one", {"token": "b", "extra": 1}, cas=1, mount_point=mount)
        latest = read(kv, "app/one", mount)
        assert latest["data"]["data"] == {"token": "b", "extra": 1}
        assert latest["data"]["metadata"]["version"] == 2
        assert set(latest) >= {"request_id", "lease_id", "renewable", "lease_duration", "data", "wrap_info",
                               "warnings", "auth"}
        assert read(kv, "app/one", mount, version=1)["data"]["data"] == {"token": "a"}
        meta = kv.secrets.kv.v2.read_secret_metadata("app/one", mount_point=mount)["data"]
        assert meta["current_version"] == 2 and meta["oldest_version"] == 1
        assert sorted(meta["versions"]) == ["1", "2"]
        assert RFC3339_NANO.match(meta["created_time"]) and RFC3339_NANO.match(meta["updated_time"])

    def test_missing_secret_is_404_with_empty_errors(self, kv, mount):
        with pytest.raises(hx.InvalidPath) as info:
            read(kv, "nope", mount)
        assert info.value.errors == []
        with pytest.raises(hx.InvalidPath):
            kv.secrets.kv.v2.read_secret_metadata("nope", mount_point=mount)

    def test_cas_mismatch_and_cas_zero(self, kv, mount):
        kv.secrets.kv.v2.create_or_update_secret("cas/x", {"v": 1}, cas=0, mount_point=mount)
        with pytest.raises(hx.InvalidRequest) as info:
            kv.secrets.kv.v2.create_or_update_secret("cas/x", {"v": 2}, cas=0, mount_point=mount)
        assert "check-and-set parameter did not match the current version" in str(info.value)
        with pytest.raises(hx.InvalidRequest):
            kv.secrets.kv.v2.create_or_update_secret("cas/x", {"v": 2}, cas=5, mount_point=mount)
        with pytest.raises(hx.InvalidRequest):   # cas > 0 on a key that does not exist
            kv.secrets.kv.v2.create_or_update_secret("cas/new", {"v": 1}, cas=1, mount_point=mount)
        assert read(kv, "cas/x", mount)["data"]["data"] == {"v": 1}

    def test_cas_required_on_key_metadata(self, kv, mount):
        kv.secrets.kv.v2.update_metadata("strict", cas_required=True, mount_point=mount)
        with pytest.raises(hx.InvalidRequest) as info:
            kv.secrets.kv.v2.create_or_update_secret("strict", {"v": 1}, mount_point=mount)
        assert "check-and-set parameter required for this call" in str(info.value)
        kv.secrets.kv.v2.create_or_update_secret("strict", {"v": 1}, cas=0, mount_point=mount)

    def test_custom_metadata_replace_and_keep(self, kv, mount):
        kv.secrets.kv.v2.create_or_update_secret("meta/x", {"v": 1}, mount_point=mount)
        kv.secrets.kv.v2.update_metadata("meta/x", custom_metadata={"owner": "team-a", "tier": "1"},
                                         mount_point=mount)
        assert read(kv, "meta/x", mount)["data"]["metadata"]["custom_metadata"] == {"owner": "team-a", "tier": "1"}
        # A metadata POST without custom_metadata keeps it; with it, replaces the whole map.
        kv.adapter.post(f"/v1/{mount}/metadata/meta/x", json={"max_versions": 5})
        meta = kv.secrets.kv.v2.read_secret_metadata("meta/x", mount_point=mount)["data"]
        assert meta["custom_metadata"] == {"owner": "team-a", "tier": "1"} and meta["max_versions"] == 5
        kv.adapter.post(f"/v1/{mount}/metadata/meta/x", json={"custom_metadata": {"owner": "team-b"}})
        meta = kv.secrets.kv.v2.read_secret_metadata("meta/x", mount_point=mount)["data"]
        assert meta["custom_metadata"] == {"owner": "team-b"}

    def test_soft_delete_undelete_destroy(self, kv, mount):
        kv.secrets.kv.v2.create_or_update_secret("del/x", {"v": 1}, mount_point=mount)
        kv.secrets.kv.v2.create_or_update_secret("del/x", {"v": 2}, mount_point=mount)
        kv.secrets.kv.v2.delete_latest_version_of_secret("del/x", mount_point=mount)
        with pytest.raises(hx.InvalidPath):
            read(kv, "del/x", mount)
        # Vault answers 404 *with* the version metadata for a deleted version.
        body = kv.secrets.kv.v2.read_secret_version("del/x", mount_point=mount, raise_on_deleted_version=False)
        assert body["data"]["data"] is None
        assert body["data"]["metadata"]["version"] == 2 and body["data"]["metadata"]["deletion_time"] != ""
        # The next write still needs cas = current_version (the deleted one).
        with pytest.raises(hx.InvalidRequest):
            kv.secrets.kv.v2.create_or_update_secret("del/x", {"v": 3}, cas=1, mount_point=mount)
        kv.secrets.kv.v2.undelete_secret_versions("del/x", versions=[2], mount_point=mount)
        assert read(kv, "del/x", mount)["data"]["data"] == {"v": 2}
        kv.secrets.kv.v2.destroy_secret_versions("del/x", versions=[1], mount_point=mount)
        meta = kv.secrets.kv.v2.read_secret_metadata("del/x", mount_point=mount)["data"]
        assert meta["versions"]["1"]["destroyed"] is True
        kv.secrets.kv.v2.undelete_secret_versions("del/x", versions=[1], mount_point=mount)
        with pytest.raises(hx.InvalidPath):
            read(kv, "del/x", mount, version=1)
        kv.secrets.kv.v2.delete_secret_versions("del/x", versions=[2], mount_point=mount)
        meta = kv.secrets.kv.v2.read_secret_metadata("del/x", mount_point=mount)["data"]
        assert meta["versions"]["2"]["deletion_time"] != ""
        kv.secrets.kv.v2.delete_metadata_and_all_versions("del/x", mount_point=mount)
        with pytest.raises(hx.InvalidPath):
            kv.secrets.kv.v2.read_secret_metadata("del/x", mount_point=mount)

    def test_max_versions_trims_oldest(self, kv, mount):
        kv.secrets.kv.v2.update_metadata("trim", max_versions=2, mount_point=mount)
        for i in range(4):
            kv.secrets.kv.v2.create_or_update_secret("trim", {"i": i}, mount_point=mount)
        meta = kv.secrets.kv.v2.read_secret_metadata("trim", mount_point=mount)["data"]
        assert sorted(meta["versions"]) == ["3", "4"]
        assert meta["oldest_version"] == 3 and meta["current_version"] == 4
        with pytest.raises(hx.InvalidPath):
            read(kv, "trim", mount, version=1)

    def test_list_keys_and_folders(self, kv, mount):
        for path in ("l/a", "l/b/c", "l/b/d"):
            kv.secrets.kv.v2.create_or_update_secret(path, {"v": 1}, mount_point=mount)
        assert kv.secrets.kv.v2.list_secrets("l", mount_point=mount)["data"]["keys"] == ["a", "b/"]
        assert kv.secrets.kv.v2.list_secrets("l/b", mount_point=mount)["data"]["keys"] == ["c", "d"]
        as_get = kv.adapter.get(f"/v1/{mount}/metadata/l", params={"list": "true"})
        assert as_get["data"]["keys"] == ["a", "b/"]
        with pytest.raises(hx.InvalidPath):
            kv.secrets.kv.v2.list_secrets("empty", mount_point=mount)

    def test_policy_denies_write_with_vault_text(self, kv, mount):
        kv.sys.create_or_update_policy("ro-" + mount, f'path "{mount}/data/pol/*" {{ capabilities = ["read"] }}')
        kv.secrets.kv.v2.create_or_update_secret("pol/x", {"v": 1}, mount_point=mount)
        token = kv.auth.token.create(policies=["ro-" + mount], ttl="10m")["auth"]["client_token"]
        limited = client_for(kv.url, token, namespace=kv.adapter.namespace)
        assert read(limited, "pol/x", mount)["data"]["data"] == {"v": 1}
        with pytest.raises(hx.Forbidden) as info:
            limited.secrets.kv.v2.create_or_update_secret("pol/x", {"v": 2}, mount_point=mount)
        assert info.value.errors == [PERMISSION_DENIED]
        caps = limited.sys.get_capabilities(paths=[f"{mount}/data/pol/x", f"{mount}/data/other"])["data"]
        assert caps[f"{mount}/data/pol/x"] == ["read"] and caps[f"{mount}/data/other"] == ["deny"]
        single = limited.sys.get_capabilities(paths=[f"{mount}/data/pol/x"])["data"]
        assert single["capabilities"] == ["read"]

    def test_invalid_token_is_403_invalid_token(self, kv, mount):
        bogus = client_for(kv.url, "hvs.not-a-token", namespace=kv.adapter.namespace)
        with pytest.raises(hx.Forbidden) as info:
            read(bogus, "x", mount)
        assert info.value.errors == [INVALID_TOKEN]

    def test_health_active(self, kv, mount):
        health = kv.sys.read_health_status(method="GET")
        assert health["initialized"] is True and health["sealed"] is False


class TestEmulatorFidelity(KvFidelity):
    @pytest.fixture
    def kv(self, root):
        return root

    @pytest.fixture
    def mount(self):
        return "secret"


@pytest.mark.vault_real
class TestRealVaultFidelity(KvFidelity):
    """Opt-in: `VAULT_ADDR=... VAULT_TOKEN=<root or admin> pytest -m vault_real`. Mounts a fresh KV v2
    engine and a policy with random names, removes both afterwards."""

    @pytest.fixture(scope="class")
    @classmethod
    def kv(cls):
        if not (os.environ.get("VAULT_ADDR") and os.environ.get("VAULT_TOKEN")):
            pytest.skip("VAULT_ADDR and VAULT_TOKEN are not set")
        return hvac.Client(url=os.environ["VAULT_ADDR"], token=os.environ["VAULT_TOKEN"],
                           namespace=os.environ.get("VAULT_NAMESPACE"), timeout=10)

    @pytest.fixture
    def mount(self, kv):
        name = "rotator-test-" + secrets.token_hex(4)
        kv.sys.enable_secrets_engine("kv", path=name, options={"version": "2"})
        deadline = time.monotonic() + 10   # a new KV v2 mount upgrades asynchronously
        while True:
            try:
                kv.secrets.kv.v2.read_configuration(mount_point=name)
                kv.secrets.kv.v2.list_secrets("", mount_point=name)
            except hx.InvalidPath:
                break
            except hx.VaultError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
                continue
            break
        yield name
        kv.sys.disable_secrets_engine(name)
        try:
            kv.sys.delete_policy("ro-" + name)
        except hx.VaultError:
            pass


# --- emulator-only fidelity ----------------------------------------------------------------------


def test_health_sealed_uninitialised_and_overrides(vault, root):
    vault.seal()
    response = requests.get(f"{vault.url}/v1/sys/health", timeout=5)
    assert response.status_code == 503 and response.json()["sealed"] is True
    assert requests.get(f"{vault.url}/v1/sys/health?sealedcode=299", timeout=5).status_code == 299
    with pytest.raises(hx.VaultDown) as info:
        read(root, "x", "secret")
    assert info.value.errors == ["Vault is sealed"]
    assert root.sys.read_seal_status()["sealed"] is True
    vault.unseal()
    vault.set_initialized(False)
    assert requests.get(f"{vault.url}/v1/sys/health", timeout=5).status_code == 501
    vault.set_initialized(True)
    assert requests.head(f"{vault.url}/v1/sys/health", timeout=5).status_code == 200


def test_json_content_type_and_204(vault, root):
    response = requests.post(f"{vault.url}/v1/secret/metadata/x", json={"max_versions": 3},
                             headers={"X-Vault-Token": vault.root_token}, timeout=5)
    assert response.status_code == 204 and response.content == b""
    response = requests.get(f"{vault.url}/v1/secret/data/missing", headers={"X-Vault-Token": vault.root_token},
                            timeout=5)
    assert response.status_code == 404 and response.headers["Content-Type"] == "application/json"
    assert response.json() == {"errors": []}


def test_unmounted_path_is_no_handler(vault, root):
    with pytest.raises(hx.InvalidPath) as info:
        root.secrets.kv.v2.read_secret_version("x", mount_point="nomount", raise_on_deleted_version=True)
    assert info.value.errors == ['no handler for route "nomount/data/x". route entry not found.']


def test_cas_required_on_mount_config(vault, root):
    root.secrets.kv.v2.configure(cas_required=True, mount_point="secret")
    assert root.secrets.kv.v2.read_configuration(mount_point="secret")["data"]["cas_required"] is True
    with pytest.raises(hx.InvalidRequest, match="check-and-set parameter required"):
        root.secrets.kv.v2.create_or_update_secret("x", {"v": 1})
    root.secrets.kv.v2.create_or_update_secret("x", {"v": 1}, cas=0)


def test_custom_metadata_limits(vault, root):
    root.secrets.kv.v2.create_or_update_secret("x", {"v": 1})
    with pytest.raises(hx.InvalidRequest, match="max is 512"):
        root.secrets.kv.v2.update_metadata("x", custom_metadata={"k": "v" * 513})


def test_merge_patch(vault, root):
    root.secrets.kv.v2.create_or_update_secret("p", {"a": 1, "b": 2})
    headers = {"X-Vault-Token": vault.root_token}
    bad = requests.patch(f"{vault.url}/v1/secret/data/p", json={"data": {"a": 9}}, headers=headers, timeout=5)
    assert bad.status_code == 415
    ok = requests.patch(f"{vault.url}/v1/secret/data/p", data=json.dumps({"data": {"a": 9, "b": None}}),
                        headers={**headers, "Content-Type": "application/merge-patch+json"}, timeout=5)
    assert ok.status_code == 200 and ok.json()["data"]["version"] == 2
    assert vault.read_secret("p") == {"a": 9}


def test_kv_v1_mount(vault, root):
    root.sys.enable_secrets_engine("kv", path="kv1", options={"version": "1"})
    root.secrets.kv.v1.create_or_update_secret("app/x", {"token": "t"}, mount_point="kv1")
    body = root.secrets.kv.v1.read_secret("app/x", mount_point="kv1")
    assert body["data"] == {"token": "t"} and body["lease_duration"] == 768 * 3600
    root.secrets.kv.v1.create_or_update_secret("app/x", {"token": "u"}, method="PUT", mount_point="kv1")
    assert root.secrets.kv.v1.list_secrets("app", mount_point="kv1")["data"]["keys"] == ["x"]
    root.secrets.kv.v1.delete_secret("app/x", mount_point="kv1")
    with pytest.raises(hx.InvalidPath):
        root.secrets.kv.v1.read_secret("app/x", mount_point="kv1")


def test_policy_globs_plus_and_priority():
    rules = [{"secret/data/apps/*": ["read", "update"], "secret/data/apps/+/locked": ["deny"],
              "secret/data/exact": ["create"], "secret/data/exact*": ["read"]}]
    assert capabilities_for(rules, "secret/data/apps/x/token") == ["read", "update"]
    assert capabilities_for(rules, "secret/data/apps/x/locked") == ["deny"]
    assert capabilities_for(rules, "secret/data/exact") == ["create"]          # exact beats glob
    assert capabilities_for(rules, "secret/data/exactly") == ["read"]
    assert capabilities_for(rules, "secret/data/other") == ["deny"]
    # identical patterns from two policies merge; deny anywhere in the merge wins
    assert capabilities_for([{"a/*": ["read"]}, {"a/*": ["update"]}], "a/b") == ["read", "update"]
    assert capabilities_for([{"a/*": ["read"]}, {"a/*": ["deny"]}], "a/b") == ["deny"]


def test_default_policy_and_missing_token(vault, root):
    token = vault.create_token(policies=[], ttl=60)
    client = client_for(vault.url, token)
    assert client.auth.token.lookup_self()["data"]["policies"] == ["default"]
    assert client.sys.get_capabilities(paths=["secret/data/x"])["data"]["capabilities"] == ["deny"]
    with pytest.raises(hx.Forbidden) as info:
        read(client_for(vault.url, ""), "x", "secret")
    assert info.value.errors == ["permission denied"]


def test_child_token_policies_must_be_subset(vault):
    vault.add_policy("p1", {"secret/data/*": ["read"]})
    vault.add_policy("auth-create", {"auth/token/create": ["update"]})
    client = client_for(vault.url, vault.create_token(policies=["p1", "auth-create"]))
    with pytest.raises(hx.InvalidRequest, match="subset"):
        client.auth.token.create(policies=["root"])
    assert client.auth.token.create(policies=["p1"])["auth"]["policies"] == ["default", "p1"]


def test_token_ttl_expiry_and_renew(vault):
    token = vault.create_token(policies=[], ttl=60, explicit_max_ttl=100)
    client = client_for(vault.url, token)
    data = client.auth.token.lookup_self()["data"]
    assert 59 <= data["ttl"] <= 60 and data["renewable"] is True and RFC3339_NANO.match(data["expire_time"])
    vault.advance(50)
    renewed = client.auth.token.renew_self()
    assert 49 <= renewed["auth"]["lease_duration"] <= 50    # capped by explicit_max_ttl (100 - 50)
    assert renewed["warnings"] and "capped" in renewed["warnings"][0]
    vault.advance(51)
    with pytest.raises(hx.Forbidden) as info:
        client.auth.token.lookup_self()
    assert info.value.errors == [INVALID_TOKEN]
    fixed = client_for(vault.url, vault.create_token(policies=[], ttl=60, renewable=False))
    with pytest.raises(hx.InvalidRequest, match="not renewable"):
        fixed.auth.token.renew_self()


def test_approle_login(vault):
    vault.add_policy("app", {"secret/data/app/*": ["read", "create", "update"]})
    role_id, secret_id = vault.add_approle("rotator", policies=["app"], token_ttl=120)
    client = client_for(vault.url)
    response = client.auth.approle.login(role_id=role_id, secret_id=secret_id)
    assert response["auth"]["lease_duration"] == 120 and response["auth"]["renewable"] is True
    assert response["auth"]["policies"] == ["app", "default"] and response["auth"]["metadata"] == {"role_name": "rotator"}
    assert response["data"] is None
    client.secrets.kv.v2.create_or_update_secret("app/x", {"v": 1})
    with pytest.raises(hx.InvalidRequest) as info:
        client_for(vault.url).auth.approle.login(role_id=role_id, secret_id="wrong")
    assert info.value.errors == ["invalid role or secret ID"]
    other_role, other_secret = vault.add_approle("r2", mount="team-approle")
    assert client_for(vault.url).auth.approle.login(role_id=other_role, secret_id=other_secret,
                                                    mount_point="team-approle")["auth"]["client_token"]


def test_kubernetes_login(vault):
    vault.add_kubernetes_role("rotator", jwts=["jwt-accepted"], policies=["app"], token_ttl=300)
    response = client_for(vault.url).auth.kubernetes.login("rotator", "jwt-accepted")
    assert response["auth"]["lease_duration"] == 300 and "app" in response["auth"]["policies"]
    with pytest.raises(hx.Forbidden):
        client_for(vault.url).auth.kubernetes.login("rotator", "jwt-other")
    with pytest.raises(hx.InvalidRequest) as info:
        client_for(vault.url).auth.kubernetes.login("nobody", "jwt-accepted")
    assert info.value.errors == ['invalid role name "nobody"']
    vault.add_kubernetes_role("r", jwts=["j2"], mount="k8s-prod")
    assert client_for(vault.url).auth.kubernetes.login("r", "j2", mount_point="k8s-prod")["auth"]["client_token"]


def test_namespaces_are_isolated(vault, root):
    vault.add_namespace("ns1")
    in_ns = client_for(vault.url, vault.root_token, namespace="ns1")
    in_ns.secrets.kv.v2.create_or_update_secret("x", {"where": "ns1"})
    root.secrets.kv.v2.create_or_update_secret("x", {"where": "root"})
    assert read(in_ns, "x", "secret")["data"]["data"] == {"where": "ns1"}
    assert read(root, "x", "secret")["data"]["data"] == {"where": "root"}
    # the namespace as a path prefix is equivalent to the header
    assert root.adapter.get("/v1/ns1/secret/data/x")["data"]["data"] == {"where": "ns1"}
    assert vault.read_secret("x", namespace="ns1") == {"where": "ns1"}
    # a token made in ns1 is not valid in the root namespace; policies are per namespace
    vault.add_policy("reader", {"secret/data/*": ["read"]}, namespace="ns1")
    ns_token = vault.create_token(policies=["reader"], namespace="ns1")
    assert read(client_for(vault.url, ns_token, namespace="ns1"), "x", "secret")["data"]["data"] == {"where": "ns1"}
    with pytest.raises(hx.Forbidden):
        read(client_for(vault.url, ns_token), "x", "secret")
    # a root-namespace policy reaches a child namespace through the "ns1/" prefix
    vault.add_policy("child-reader", {"ns1/secret/data/*": ["read"]})
    parent_token = vault.create_token(policies=["child-reader"])
    assert read(client_for(vault.url, parent_token, namespace="ns1"), "x", "secret")["data"]["data"]
    with pytest.raises(hx.Forbidden):
        read(client_for(vault.url, parent_token), "x", "secret")
    # an unknown namespace resolves to nothing mounted
    with pytest.raises(hx.InvalidPath, match="no handler for route"):
        read(client_for(vault.url, vault.root_token, namespace="nope"), "x", "secret")
    # sys/health is a root-namespace endpoint
    assert requests.get(f"{vault.url}/v1/sys/health", headers={"X-Vault-Namespace": "ns1"}, timeout=5).status_code == 404


def test_faults_status_lose_answer_hang_reset(vault, root):
    vault.faults.add(kind="status", status=503, path=r"/v1/secret/data/f$", errors=["Vault is sealed"])
    with pytest.raises(hx.VaultDown):
        root.secrets.kv.v2.create_or_update_secret("f", {"v": 1})
    assert vault.read_secret("f") is None                     # a status fault has no effect
    vault.faults.add(kind="lose_answer", method="POST", path=r"/v1/secret/data/f$")
    with pytest.raises(requests.ConnectionError):
        root.secrets.kv.v2.create_or_update_secret("f", {"v": 1})
    assert vault.read_secret("f") == {"v": 1}                 # ... a lost answer has
    vault.faults.add(kind="hang", path=r"/v1/secret/data/f$")
    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        client_for(vault.url, vault.root_token, timeout=0.3).secrets.kv.v2.read_secret_version(
            "f", raise_on_deleted_version=True)
    assert time.monotonic() - started < 3
    vault.faults.add(kind="reset", path=r"/v1/secret/data/f$")
    with pytest.raises(requests.ConnectionError):
        read(root, "f", "secret")
    vault.faults.add(kind="delay", delay_seconds=0.2, path=r"/v1/secret/data/f$")
    started = time.monotonic()
    assert read(root, "f", "secret")["data"]["data"] == {"v": 1}
    assert time.monotonic() - started >= 0.2
    assert not vault.faults.list()


def test_concurrent_clients(vault, root):
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            client = client_for(vault.url, vault.root_token)
            for n in range(5):
                client.secrets.kv.v2.create_or_update_secret(f"c/{i}", {"n": n}, cas=n)
        except BaseException as exc:   # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(vault.list_keys()) == 32 and vault.read_secret("c/7") == {"n": 4}


def test_process_mode_state_file_survives_restart(tmp_path):
    state = tmp_path / "vault.json"

    def launch() -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen([sys.executable, "-m", "rotator.testing.vault_emulator", "--port", "0",
                                 "--root-token", "root-t", "--state-file", str(state)],
                                stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        return proc, json.loads(line)["url"]

    proc, url = launch()
    try:
        client = client_for(url, "root-t")
        client.secrets.kv.v2.create_or_update_secret("persist/x", {"v": 1})
        requests.post(f"{url}/_emulator/faults", json={"kind": "status", "status": 500}, timeout=5)
        with pytest.raises(hx.InternalServerError):
            read(client, "persist/x", "secret")
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
    finally:
        proc.kill()
        proc.wait(timeout=5)
    proc, url = launch()
    try:
        assert read(client_for(url, "root-t"), "persist/x", "secret")["data"]["data"] == {"v": 1}
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0
