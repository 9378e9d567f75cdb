"""Store identity, settings, init on an existing store, upgrade, and format evolution in both
directions (unknown required features refused, unknown optional fields carried)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from cas import Store
from cas.errors import SchemaError
from cas.format.canonical import checksum
from cas.format.config import FORMAT_VERSION, StoreConfig, seal
from cas.settings import encode as encode_settings


def test_new_store_has_uuid_and_features(cas):
    cfg = json.loads((cas.store / "config.json").read_text())
    assert cfg["version"] == FORMAT_VERSION == 3
    uuid.UUID(cfg["uuid"])
    assert cfg["features"] == ["derived-chunks"]
    listing = cas("--json", "config", "list").json
    assert listing["uuid"] == cfg["uuid"]
    assert listing["settings"]["restore_window"] == {
        "value": "14d", "default": "14d", "set": False, "known": True}


def test_two_stores_get_different_uuids(tmp_path):
    a = Store.init(tmp_path / "a")
    b = Store.init(tmp_path / "b")
    assert a.uuid and b.uuid and a.uuid != b.uuid


def test_config_set_get_validates_and_writes_atomically(cas):
    cas("config", "set", "description", "training box 3")
    assert cas("config", "get", "description").out.strip() == "training box 3"
    cas("config", "set", "restore_window", "2w")
    assert cas("--json", "config", "get", "restore_window").json["value"] == "14d"
    for key, value in (("restore_window", "soon"), ("description", "two\nlines"),
                       ("nonsense", "1")):
        r = cas("--json", "config", "set", key, value, ok=False)
        assert r.code == 2 and r.json["error"]["code"] == "E_ARGS"
    assert cas("config", "get", "restore_window").out.strip() == "14d"  # unchanged
    cas("config", "set", "restore_window", "--unset")
    assert cas("config", "get", "restore_window").out.strip() == "14d"
    doc = json.loads((cas.store / "settings.json").read_text())
    assert doc == {"description": "training box 3", "checksum": checksum(doc)}
    assert not list((cas.store / "tmp").iterdir())


def test_settings_keep_keys_of_a_newer_cas(cas):
    """A newer cas seals what it writes: its keys are listed, and kept by 'config set'."""
    (cas.store / "settings.json").write_bytes(
        encode_settings({"lru_grace": "50G", "description": "x"}))
    listing = cas("--json", "config", "list").json["settings"]
    assert listing["lru_grace"] == {"value": "50G", "default": None, "set": True, "known": False}
    cas("config", "set", "description", "y")
    doc = json.loads((cas.store / "settings.json").read_text())
    assert doc == {"lru_grace": "50G", "description": "y", "checksum": checksum(doc)}


def test_damaged_settings_named_in_a_clear_error(cas):
    (cas.store / "settings.json").write_text("{not json")
    r = cas("--json", "config", "list", ok=False)
    assert r.json["error"]["code"] == "E_SCHEMA" and "settings.json" in r.json["error"]["message"]
    assert "Traceback" not in r.err


def test_init_on_an_existing_store(cas, tmp_path):
    again = cas("--json", "init").json
    assert again["created"] is False
    assert "already initialized: " in cas("init").out
    r = cas("--json", "init", "--no-derive", ok=False)
    assert r.code == 10 and r.json["error"]["code"] == "E_CONFLICT"
    plain = tmp_path / "plain"
    cas("init", str(plain), "--no-derive")
    assert "already initialized" in cas("init", str(plain), "--no-derive").out
    assert cas("--json", "init", str(plain)).json["derive"] is False  # no option: agrees
    cfg = json.loads((plain / "config.json").read_text())
    assert cfg["features"] == [] and cfg["compression"]["derive"] is False


@pytest.mark.parametrize("kind", ["missing", "file", "hf-folder", "empty-dir"])
def test_not_a_cas_store(cas, tmp_path, kind):
    target = tmp_path / kind
    if kind == "file":
        target.write_text("x")
    elif kind == "hf-folder":
        target.mkdir()
        (target / "config.json").write_text('{"architectures": ["BertModel"]}')
    elif kind == "empty-dir":
        target.mkdir()
    r = cas("--json", "--store", str(target), "ls", ok=False)
    assert r.json["error"]["code"] == "E_NOT_FOUND"
    assert r.json["error"]["message"].startswith(f"not a cas store: {target}")


def _old_store(tmp_path: Path, version: int) -> Path:
    """A store as an earlier cas wrote it: same layout, config of that version."""
    path = tmp_path / f"v{version}"
    store = Store.init(path)
    store.close()
    cfg = json.loads((path / "config.json").read_text())
    del cfg["uuid"], cfg["features"], cfg["checksum"]  # written before checksums existed
    cfg["version"] = version
    if version == 1:
        del cfg["compression"]["derive"]
    (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize("version", [1, 2])
def test_older_stores_work_and_upgrade(cas, tmp_path, version):
    path = _old_store(tmp_path, version)
    run = lambda *a, **k: cas("--store", str(path), *a, **k)  # noqa: E731
    src = tmp_path / "src"
    src.mkdir()
    (src / "w.bin").write_bytes(b"w" * 5000)
    run("add", "old/m", str(src))
    assert "cas upgrade" in run("init").out
    assert run("--json", "config", "list").json["uuid"] is None
    up = run("--json", "upgrade").json
    assert (up["from_version"], up["to_version"]) == (version, 3)
    cfg = json.loads((path / "config.json").read_text())
    uuid.UUID(cfg["uuid"])
    assert cfg["features"] == (["derived-chunks"] if version == 2 else [])
    assert StoreConfig.decode((path / "config.json").read_bytes()).derives is (version == 2)
    again = run("--json", "upgrade").json
    assert again["from_version"] == again["to_version"] == 3 and again["uuid"] == cfg["uuid"]
    assert run("--json", "verify", "--all").json["ok"]
    assert run("--json", "show", "old/m").json["seq"] == 1


def test_upgrade_refuses_unknown_keys_in_a_config_without_checksum(tmp_path):
    """No cas ever wrote a key it did not know into a config without a checksum: one there
    is a misspelling, not an optional field to carry (newer fields come sealed)."""
    path = _old_store(tmp_path, 2)
    cfg = json.loads((path / "config.json").read_text())
    cfg["future_hint"] = {"a": 1}
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SchemaError, match="unknown 'future_hint'"):
        Store.open(path)


def test_unknown_required_store_feature_refused(cas):
    cfg = json.loads((cas.store / "config.json").read_text())
    cfg["features"].append("encrypted-packs")
    (cas.store / "config.json").write_text(json.dumps(cfg))
    r = cas("--json", "ls", ok=False)
    assert r.code == 11 and r.json["error"]["code"] == "E_FORMAT"
    assert "encrypted-packs" in r.json["error"]["message"]


def test_unknown_optional_config_key_accepted(cas):
    """A newer cas seals the fields it adds: this build accepts them (checksum and all)."""
    cfg = json.loads((cas.store / "config.json").read_text())
    cfg["hint_from_newer_cas"] = True
    cfg["compression"]["dictionary"] = "none"
    (cas.store / "config.json").write_bytes(seal(cfg))
    assert cas("--json", "ls").json["models"] == []


def test_newer_manifest_metadata_never_refused_and_carried_by_annotate(cas, tmp_path):
    """A manifest written by a newer cas with optional fields this build does not know is
    read, and annotating it keeps those fields (both directions of the evolution rule)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "w.bin").write_bytes(b"x" * 100)
    cas("add", "new/m", str(src))
    store = Store.open(cas.store)
    v = store.resolve("new/m")
    doc = json.loads(store.registry.manifest_bytes(v))
    doc["signature"] = {"alg": "ed25519", "sig": "ab"}
    doc["metadata"]["energy_kwh"] = 12.5
    doc["metadata"]["provenance"] = {"run_id": "r1", "cluster": "north"}
    doc["files"][0]["xet_hash"] = "00" * 32
    with store.writing():
        store.registry.annotate_version(v, json.dumps(doc, indent=2).encode())
    store.close()
    assert cas("--json", "show", "new/m").json["manifest"]["metadata"]["provenance"] == {
        "run_id": "r1"}
    cas("annotate", "new/m", "--metric", "acc=0.75", "--seed", "7")
    store = Store.open(cas.store)
    after = json.loads(store.registry.manifest_bytes(store.resolve("new/m")))
    store.close()
    assert after["signature"] == {"alg": "ed25519", "sig": "ab"}
    assert after["metadata"]["energy_kwh"] == 12.5
    assert after["metadata"]["metrics"] == {"acc": 0.75}
    assert after["metadata"]["provenance"] == {"run_id": "r1", "seed": 7, "cluster": "north"}
    assert after["files"][0]["xet_hash"] == "00" * 32
    # and a manifest requiring a feature this build lacks is refused, naming it
    doc["requires"] = ["tensor-parity"]
    store = Store.open(cas.store)
    with store.writing():
        store.registry.annotate_version(store.resolve("new/m"), json.dumps(doc).encode())
    store.close()
    r = cas("--json", "show", "new/m", ok=False)
    assert r.json["error"]["code"] == "E_FORMAT" and "tensor-parity" in r.json["error"]["message"]


def test_empty_paths_are_refused_not_taken_for_the_current_folder(cas, tmp_path):
    for args in (["add", "m", ""], ["init", ""], ["--store", "", "ls"], ["ls", "--store", " "]):
        r = cas("--json", *args, ok=False)
        assert r.code == 2 and r.json["error"]["code"] == "E_ARGS", args


def test_init_on_a_model_folder_is_a_conflict(cas, tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"architectures": ["BertModel"]}')
    r = cas("--json", "init", str(hf), ok=False).json
    assert r["error"]["code"] == "E_CONFLICT" and "not a cas store" in r["error"]["message"]
    assert sorted(p.name for p in hf.iterdir()) == ["config.json"]
