"""cas export --layout: the deterministic models/ layout and its registry file; --link."""

from __future__ import annotations

import hashlib
import json
import os

from cas.layout import REGISTRY


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_layout_install_is_deterministic_and_idempotent(cas, real_model, tmp_path):
    cas("add", "sentence-transformers/all-MiniLM-L6-v2", str(real_model))
    root = tmp_path / "models"
    r = cas("--json", "export", "sentence-transformers/all-MiniLM-L6-v2", "--layout",
            str(root)).json
    folder = root / "transformers/sentence-transformers/all-MiniLM-L6-v2"
    assert r["path"] == "transformers/sentence-transformers/all-MiniLM-L6-v2"
    assert _sha(folder / "model.safetensors") == _sha(real_model / "model.safetensors")
    assert (root / "configs/all-MiniLM-L6-v2.json").read_bytes() == \
        (real_model / "config.json").read_bytes()
    reg = json.loads((root / REGISTRY).read_bytes())
    (entry,) = reg["models"]
    assert entry["kind"] == "transformers" and entry["seq"] == 1
    assert entry["config"] == "configs/all-MiniLM-L6-v2.json"
    assert {f["path"]: f["sha256"] for f in entry["files"]}["config.json"] == \
        _sha(real_model / "config.json")
    again = cas("--json", "export", "sentence-transformers/all-MiniLM-L6-v2", "--layout",
                str(root)).json
    assert again["files_written"] == 0 and again["files_kept"] == r["files"]


def test_gguf_goes_to_llama_cpp_and_new_version_replaces_only_cas_files(cas, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "tiny.gguf").write_bytes(b"GGUF" + os.urandom(4000))
    (src / "old.txt").write_text("old")
    cas("add", "team/tiny", str(src))
    root = tmp_path / "models"
    cas("export", "team/tiny", "--layout", str(root))
    folder = root / "llama-cpp/team/tiny"
    assert (folder / "old.txt").read_text() == "old"
    (folder / "mine.txt").write_text("a file cas did not write")
    (src / "old.txt").unlink()
    (src / "tiny.gguf").write_bytes(b"GGUF" + os.urandom(4000))
    cas("add", "team/tiny", str(src))
    r = cas("--json", "export", "team/tiny", "--layout", str(root)).json
    assert r["files_removed"] == 1 and not (folder / "old.txt").exists()
    assert (folder / "mine.txt").exists()
    assert json.loads((root / REGISTRY).read_bytes())["models"][0]["seq"] == 2


def test_link_shares_checked_out_bytes_and_survives_edits(cas, real_model, tmp_path):
    cas("add", "st/minilm", str(real_model))
    co = tmp_path / "co"
    cas("checkout", "st/minilm", str(co))
    root = tmp_path / "models"
    cas("export", "st/minilm", "--layout", str(root), "--link")
    exported = root / "transformers/st/minilm/model.safetensors"
    same = os.stat(exported).st_ino == os.stat(co / "model.safetensors").st_ino
    assert _sha(exported) == _sha(real_model / "model.safetensors")
    assert same  # a hard link here (tmp is not a reflink filesystem), a clone elsewhere
    # a checkout edited since it was written is not shared: the export writes from the store
    (co / "config.json").write_text("{}")
    root2 = tmp_path / "models2"
    cas("export", "st/minilm", "--layout", str(root2), "--link")
    assert (root2 / "transformers/st/minilm/config.json").read_bytes() == \
        (real_model / "config.json").read_bytes()


def test_planted_symlink_and_bad_registry_are_refused(cas, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "w.gguf").write_bytes(b"GGUF" + b"\0" * 100)
    cas("add", "team/tiny", str(src))
    root = tmp_path / "models"
    (root / "llama-cpp").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "llama-cpp/team")
    r = cas("--json", "export", "team/tiny", "--layout", str(root), ok=False)
    assert r.json["error"]["code"] == "E_CONFLICT" and list(outside.iterdir()) == []
    os.unlink(root / "llama-cpp/team")
    (root / REGISTRY).write_text('{"schema": "cas.layout", "version": 1, "models": '
                                 '[{"path": "../x"}]}')
    r = cas("--json", "export", "team/tiny", "--layout", str(root), ok=False)
    assert r.json["error"]["code"] == "E_SCHEMA"
