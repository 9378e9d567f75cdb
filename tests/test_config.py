"""config.json and settings.json are sealed by a checksum: an edit or damage that leaves valid
JSON is refused by name (E_VERIFY) instead of being reinterpreted; files written before the
checksum existed keep opening, must hold every field of their version, and ``cas upgrade`` /
``cas config set`` seal them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cas import Store
from cas.errors import SchemaError, VerifyError
from cas.format.canonical import canonical_json, checksum
from cas.format.config import StoreConfig, seal


def _config(store: Path) -> dict:
    return json.loads((store / "config.json").read_text())


def _expect(r, code: str, exit_code: int, *words: str) -> None:
    assert r.code == exit_code, (r.out, r.err)
    err = r.json["error"]
    assert err["code"] == code, err
    for w in words:
        assert w in err["message"], (w, err["message"])
    assert "Traceback" not in r.err


def test_a_misspelled_config_key_is_refused_not_ignored(cas, tmp_path):
    """'featurs' was read as an unknown optional field and turned derived chunks off."""
    text = (cas.store / "config.json").read_text()
    assert text.count('"features"') == 1
    (cas.store / "config.json").write_text(text.replace('"features"', '"featurs"'))
    before = (cas.store / "config.json").read_bytes()
    src = tmp_path / "src"
    src.mkdir()
    (src / "w.bin").write_bytes(b"w" * 1000)
    for args in (["ls"], ["add", "m", str(src)], ["verify", "--all"], ["config", "list"],
                 ["upgrade"], ["init"]):
        _expect(cas("--json", *args, ok=False), "E_VERIFY", 4, str(cas.store), "config.json",
                "checksum", "cas upgrade")
    assert (cas.store / "config.json").read_bytes() == before
    plain = cas("ls", ok=False)
    assert plain.code == 4 and "config.json does not match its checksum" in plain.err


@pytest.mark.parametrize("edit", ["pack_target_bytes", "derive", "level", "created_at"])
def test_a_changed_config_value_is_refused(cas, edit):
    cfg = _config(cas.store)
    if edit == "pack_target_bytes":
        cfg["pack_target_bytes"] = 1 << 20
    elif edit == "derive":
        cfg["compression"]["derive"] = False
    elif edit == "level":
        cfg["compression"]["level"] = 3
    else:
        cfg["created_at"] += " "
    (cas.store / "config.json").write_text(json.dumps(cfg))
    _expect(cas("--json", "ls", ok=False), "E_VERIFY", 4, "config.json")


def test_the_checksum_ignores_layout_and_member_order(cas):
    """The checksum covers the canonical encoding (RFC 8785), not the bytes of the file."""
    cfg = _config(cas.store)
    shuffled = dict(reversed(list(cfg.items())))
    shuffled["chunker"] = dict(reversed(list(cfg["chunker"].items())))
    (cas.store / "config.json").write_text(json.dumps(shuffled, indent=7, ensure_ascii=True))
    assert cas("--json", "ls").json["models"] == []


def test_a_damaged_checksum_value_is_refused(cas):
    cfg = _config(cas.store)
    for bad in (cfg["checksum"][:-1] + ("0" if cfg["checksum"][-1] != "0" else "1"), "", 7,
                None, cfg["checksum"].upper()):
        (cas.store / "config.json").write_text(json.dumps({**cfg, "checksum": bad}))
        _expect(cas("--json", "ls", ok=False), "E_VERIFY", 4, "config.json")


def _unsealed(store: Path, **changes) -> None:
    """The config as a cas from before checksums wrote it, with ``changes``."""
    cfg = _config(store)
    del cfg["checksum"]
    cfg.update(changes)
    (store / "config.json").write_text(json.dumps(cfg, indent=2))


def test_a_config_written_before_checksums_opens_and_upgrade_seals_it(cas, tmp_path):
    _unsealed(cas.store)
    assert cas("--json", "ls").json["models"] == []
    up = cas("--json", "upgrade").json
    assert up["from_version"] == up["to_version"] == 3 and up["changed"] is True
    cfg = _config(cas.store)
    assert cfg["checksum"] == checksum(cfg)
    assert list(cfg)[-1] == "checksum"
    again = cas("--json", "upgrade").json
    assert again["uuid"] == cfg["uuid"] and again["changed"] is False  # sealed: nothing to do
    assert "already at format version 3" in cas("upgrade").out
    assert _config(cas.store) == cfg


@pytest.mark.parametrize("key, where", [("features", "top"), ("derive", "compression"),
                                        ("pack_target_bytes", "top"), ("checksum", "top")])
def test_a_misspelled_key_in_a_config_without_checksum_is_refused(cas, key, where):
    """Without a checksum (a config from before it, or one whose checksum key is the one
    misspelled) the config must hold exactly the fields of its version."""
    cfg = _config(cas.store)
    if key != "checksum":
        del cfg["checksum"]
    target = cfg if where == "top" else cfg["compression"]
    target[key[:-1]] = target.pop(key)
    (cas.store / "config.json").write_text(json.dumps(cfg))
    r = cas("--json", "ls", ok=False)
    prefix = "" if where == "top" else "compression."
    _expect(r, "E_SCHEMA", 5, "config.json", f"unknown '{prefix}{key[:-1]}'", "misspelled")
    if key != "checksum":
        assert f"'{prefix}{key}' missing" in r.json["error"]["message"]


def test_the_escape_hatch_accepts_a_deliberate_edit(cas):
    """Deleting the checksum line accepts the file as it is; 'cas upgrade' seals it again."""
    cfg = _config(cas.store)
    cfg["pack_target_bytes"] = 1 << 20
    (cas.store / "config.json").write_text(json.dumps(cfg))
    _expect(cas("--json", "ls", ok=False), "E_VERIFY", 4)
    del cfg["checksum"]
    (cas.store / "config.json").write_text(json.dumps(cfg))
    cas("upgrade")
    with Store.open(cas.store) as store:
        assert store.config.pack_target_bytes == 1 << 20


def test_store_config_decode_checks_the_seal_after_the_fields():
    """Errors that name a field keep their code; the checksum catches what they cannot."""
    good = StoreConfig.create(derive=True, created_at="2024-01-01T00:00:00Z").encode()
    assert StoreConfig.decode(good).derives
    doc = json.loads(good)
    with pytest.raises(VerifyError, match="checksum") as info:
        StoreConfig.decode(json.dumps({**doc, "features": []}).encode())
    assert info.value.code == "E_VERIFY" and info.value.actual != doc["checksum"]
    with pytest.raises(SchemaError, match="min_size"):  # a field error first
        StoreConfig.decode(json.dumps({**doc, "chunker": {**doc["chunker"], "min_size": 1}})
                           .encode())
    resealed = seal({**doc, "note": "from a newer cas"})
    assert StoreConfig.decode(resealed) == StoreConfig.decode(good)


# -- settings.json -------------------------------------------------------------------------


def test_a_misspelled_settings_key_is_refused_not_ignored(cas):
    """'restore_windw' silently meant the default window: garbage collection would have
    dropped removed versions earlier than the user set."""
    cas("config", "set", "restore_window", "60d")
    path = cas.store / "settings.json"
    text = path.read_text()
    path.write_text(text.replace('"restore_window"', '"restore_windw"'))
    for args in (["config", "list"], ["config", "get", "restore_window"]):
        _expect(cas("--json", *args, ok=False), "E_VERIFY", 4, "settings.json", "checksum",
                "cas config set")
    path.write_text(text)
    assert cas("config", "get", "restore_window").out.strip() == "60d"


def test_a_misspelled_key_in_settings_without_checksum_is_refused(cas):
    path = cas.store / "settings.json"
    path.write_text(json.dumps({"restore_windw": "60d"}))
    _expect(cas("--json", "config", "list", ok=False), "E_SCHEMA", 5, "settings.json",
            "'restore_windw'", "restore_window")


def test_settings_written_before_checksums_are_read_and_sealed_by_set(cas):
    path = cas.store / "settings.json"
    path.write_text(json.dumps({"restore_window": "30d"}))
    assert cas("config", "get", "restore_window").out.strip() == "30d"
    cas("config", "set", "description", "box")
    doc = json.loads(path.read_text())
    assert doc == {"restore_window": "30d", "description": "box", "checksum": checksum(doc)}
    # a hand edit of a sealed file, deliberate: delete the checksum line to accept it
    del doc["checksum"]
    path.write_text(json.dumps({**doc, "restore_window": "2w"}))
    assert cas("config", "get", "restore_window").out.strip() == "14d"


# -- canonical encoding ----------------------------------------------------------------------


@pytest.mark.parametrize("value, text", [
    # RFC 8785 section 3.2.2.3 and appendix B
    (333333333.33333329, "333333333.3333333"), (1e30, "1e+30"), (4.50, "4.5"),
    (2e-3, "0.002"), (0.000000000000000000000000001, "1e-27"), (-0.0, "0"), (1e21, "1e+21"),
    (1e20, "100000000000000000000"), (5e-324, "5e-324"), (1e-7, "1e-7"), (1e-6, "0.000001"),
    (-1.5, "-1.5"), (2**60, str(2**60)), (True, "true"), (None, "null"),
    ("\u20ac$\x0f\nA'B\"\\\\\"/", '"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"'),
    ({"\u20ac": 1, "\U0001f600": 2, "\ufb33": 3, "1": [], "\r": {}},
     '{"\\r":{},"1":[],"\u20ac":1,"\U0001f600":2,"\ufb33":3}'),
])
def test_canonical_json_is_rfc_8785(value, text):
    assert canonical_json(value) == text.encode()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "\ud800", {"a": ["\udfff"]}])
def test_canonical_json_refuses_what_json_cannot_hold(value):
    with pytest.raises(SchemaError):
        canonical_json(value)


def test_upgrade_says_when_it_only_sealed_the_config(cas):
    _unsealed(cas.store)
    assert "sealed its config.json with a checksum" in cas("upgrade").out
