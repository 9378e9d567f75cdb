"""Damaged and missing pack indexes: verify tells them apart from damaged data, and
``verify --all --repair`` (or any writer, for unreadable ones) rebuilds them from the packs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cas.format import pack as fmt
from conftest import run_json as cas


def populated(tmp_path: Path) -> tuple[Path, Path, bytes]:
    store = tmp_path / "store"
    data = np.random.default_rng(5).bytes(3 << 20) + bytes(1 << 20)
    src = tmp_path / "w.bin"
    src.write_bytes(data)
    assert cas(store, "init")[0] == 0
    assert cas(store, "add", "m", str(src))[0] == 0
    (idx,) = (store / "packs").glob("*.idx")
    return store, idx, data


def test_damaged_index_records_are_found_and_repaired(tmp_path):
    store, idx, data = populated(tmp_path)
    raw = bytearray(idx.read_bytes())
    raw[fmt.IDX_RECORDS_START + 40] ^= 0xFF  # raw_len of the first record
    idx.write_bytes(bytes(raw))
    code, doc = cas(store, "verify", "--all")
    assert code == 4
    report = doc["report"]
    assert report["bad_indexes"] == [idx.name[5:-4]]
    assert report["bad_objects"] == []  # the chunks themselves are sound
    code, doc = cas(store, "verify", "--all", "--repair")
    assert code == 0 and doc["repaired_indexes"] == [idx.name[5:-4]]
    assert cas(store, "checkout", "m", str(tmp_path / "out"))[0] == 0
    assert (tmp_path / "out" / "w.bin").read_bytes() == data


def test_unreadable_index_is_rebuilt_by_the_next_writer(tmp_path):
    store, idx, data = populated(tmp_path)
    idx.write_bytes(b"garbage")
    code, doc = cas(store, "verify", "--all")
    assert code == 4 and doc["report"]["bad_indexes"] == [idx.name[5:-4]]
    assert cas(store, "tag", "m@1", "fixed")[0] == 0  # any write command recovers first
    assert cas(store, "verify", "--all")[0] == 0
    assert fmt.check_index_header(idx.read_bytes(), "t", idx.stat().st_size) > 0


def test_repair_only_on_the_whole_store(tmp_path):
    store, _, _ = populated(tmp_path)
    code, doc = cas(store, "verify", "m", "--repair")
    assert code == 2 and doc["error"]["code"] == "E_ARGS"


def test_checkout_with_a_damaged_index_says_e_verify_naming_it(tmp_path):
    store, idx, data = populated(tmp_path)
    pack_id = idx.name[5:-4]
    idx.write_bytes(b"garbage")
    code, doc = cas(store, "checkout", "m", str(tmp_path / "out"))
    assert code == 4 and doc["error"]["code"] == "E_VERIFY", doc
    assert f"index of pack {pack_id} is damaged" in doc["error"]["message"]
    assert "--repair" in doc["error"]["message"]


def test_checkout_with_a_missing_index_says_e_verify_naming_the_pack(tmp_path):
    store, idx, data = populated(tmp_path)
    idx.unlink()
    code, doc = cas(store, "checkout", "m", str(tmp_path / "out"))
    assert code == 4 and doc["error"]["code"] == "E_VERIFY", doc
    assert f"pack {idx.name[5:-4]} has no index" in doc["error"]["message"]
