"""``cas verify --all --repair --from REMOTE``: damaged or missing objects healed from a copy
held by another store, verified on arrival."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import CasCli, damage_chunk, write_files


def _setup(tmp_path: Path, cas: CasCli) -> tuple[Path, Path]:
    src = write_files(tmp_path / "m", {"w.bin": os.urandom(1_500_000), "c.json": b"{}"})
    cas("add", "org/m", str(src), "-q")
    remote = tmp_path / "remote"
    cas("push", str(remote), "-q")
    cas("remote", "add", "backup", str(remote), "-q")
    return src, remote


def test_repair_from_a_remote_heals_a_damaged_chunk(tmp_path: Path, cas: CasCli,
                                                    store_path: Path) -> None:
    src, remote = _setup(tmp_path, cas)
    damage_chunk(store_path, "org/m", "w.bin", 2)
    bad = cas("verify", "--all", "--json", ok=False)
    assert bad.json["error"]["code"] == "E_VERIFY"
    healed = cas("verify", "--all", "--repair", "--from", "backup", "--json")
    assert healed.json["ok"] and healed.json["healed_objects"] == 1
    cas("checkout", "org/m", str(tmp_path / "out"))
    assert (tmp_path / "out" / "w.bin").read_bytes() == (src / "w.bin").read_bytes()
    # A folder holding a store works as well as a remote's name (here: nothing to heal).
    again = cas("verify", "--all", "--repair", "--from", str(remote), "--json")
    assert again.json["ok"] and again.json["healed_objects"] == 0


def test_repair_from_a_remote_that_is_damaged_too_stays_broken(tmp_path: Path, cas: CasCli,
                                                                 store_path: Path) -> None:
    _src, remote = _setup(tmp_path, cas)
    damage_chunk(store_path, "org/m", "w.bin", 1)
    damage_chunk(remote, "org/m", "w.bin", 1)
    r = cas("verify", "--all", "--repair", "--from", "backup", "--json", ok=False)
    assert r.json["error"]["code"] == "E_VERIFY"
    assert "broken versions: org/m@1" in r.json["error"]["message"]
    # Nothing the remote sent became visible; the local store is as damaged as before.
    assert CasCli(remote)("verify", "--all", ok=False).code != 0


def test_repair_from_a_remote_brings_a_missing_pack_back(tmp_path: Path, cas: CasCli,
                                                         store_path: Path) -> None:
    src, _remote = _setup(tmp_path, cas)
    for p in (store_path / "packs").glob("pack-*"):
        p.unlink()
    for m in (store_path / "packs").glob("midx-*"):
        m.unlink()
    assert cas("verify", "--all", ok=False).code != 0
    healed = cas("verify", "--all", "--repair", "--from", "backup", "--json")
    assert healed.json["ok"] and healed.json["healed_objects"] > 1
    cas("checkout", "org/m", str(tmp_path / "out"))
    assert (tmp_path / "out" / "w.bin").read_bytes() == (src / "w.bin").read_bytes()
