"""``cas add`` and metadata: what an unchanged add could not record is named, and weight
headers that cannot be believed are reported and record nothing."""

from __future__ import annotations

import json
import shlex
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def _safetensors_with_header(path: Path, header: dict, data: bytes) -> Path:
    blob = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def test_an_unchanged_add_names_the_metadata_it_did_not_record(cas, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "w.bin").write_bytes(b"w" * 10_000)
    cas("add", "m", str(src), "--role", "base", "--metric", "acc=0.5")
    cas("add", "other", str(src))
    r = cas("--json", "add", "m", str(src), "-m", "eval run", "--metric", "acc=0.5",
            "--metric", "f1=0.75", "--role", "base", "--license", "mit", "--meta", "k=v w",
            "--parent", "other", "--run-id", "r7", "--dataset", "wiki@1", "--seed", "3",
            "--env", "torch=2.5").json
    assert not r["created"] and r["seq"] == 1
    [w] = r["warnings"]
    assert w["code"] == "W_METADATA_NOT_RECORDED"
    message = w["message"]
    for given in ("--metric f1=0.75", "--license mit", "--meta 'k=v w'", "--parent other",
                  "--run-id r7", "--dataset wiki@1", "--seed 3", "--env torch=2.5",
                  "-m 'eval run'"):
        assert given in message, given
    # What version 1 already records is not named.
    assert "acc" not in message and "--role" not in message
    command = message.split("record them with: ", 1)[1]
    assert shlex.split(command)[:3] == ["cas", "annotate", "m@1"]
    meta = cas("--json", "show", "m").json["manifest"]["metadata"]
    assert meta["metrics"] == {"acc": 0.5} and "license" not in meta
    human = cas("add", "m", str(src), "--metric", "f1=0.75")
    assert "[W_METADATA_NOT_RECORDED]" in human.err and "cas annotate m@1" in human.err
    assert cas("--json", "add", "m", str(src), "--role", "base").json["warnings"] == []


def test_a_safetensors_header_that_disagrees_with_its_data_is_reported(cas, tmp_path):
    src = tmp_path / "src"
    # 10^12 "parameters" claimed over 8 bytes of data.
    _safetensors_with_header(src / "model.safetensors",
                             {"w": {"dtype": "F32", "shape": [1000000, 1000000],
                                    "data_offsets": [0, 8]}}, b"\0" * 8)
    r = cas("--json", "add", "m", str(src))
    [w] = r.json["warnings"]
    assert w["code"] == "W_BAD_HEADER"
    assert str(src / "model.safetensors") in w["message"] and "'w'" in w["message"]
    meta = cas("--json", "show", "m").json["manifest"]["metadata"]
    assert meta["format"] == "safetensors"
    assert "parameter_count" not in meta and "dtypes" not in meta
    out = tmp_path / "out"
    cas("checkout", "m", str(out))  # still registered, as bytes
    assert (out / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert "[W_BAD_HEADER]" in cas("add", "m2", str(src)).err


def test_an_unparseable_gguf_is_reported_and_a_sound_model_is_not(cas, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    r = cas("--json", "add", "q", str(src)).json
    assert [w["code"] for w in r["warnings"]] == ["W_BAD_HEADER"]
    assert "model.gguf" in r["warnings"][0]["message"]
    assert "parameter_count" not in cas("--json", "show", "q").json["manifest"]["metadata"]

    good = tmp_path / "good"
    good.mkdir()
    save_file({"a": np.zeros((3, 4), np.float32), "b": np.ones(5, np.float16)},
              str(good / "model.safetensors"))
    r = cas("--json", "add", "g", str(good)).json
    assert r["warnings"] == []
    meta = cas("--json", "show", "g").json["manifest"]["metadata"]
    assert meta["parameter_count"] == 17 and meta["dtypes"] == ["F16", "F32"]


def test_one_bad_shard_drops_the_parameter_count_but_keeps_the_sound_dtypes(cas, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    save_file({"a": np.zeros((64, 64), np.float32)}, str(src / "model-1.safetensors"))
    _safetensors_with_header(src / "model-2.safetensors",  # overlapping tensors
                             {"x": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]},
                              "y": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}},
                             b"\0" * 8)
    r = cas("--json", "add", "m", str(src)).json
    [w] = r["warnings"]
    assert "model-2.safetensors" in w["message"] and "overlapping" in w["message"]
    meta = cas("--json", "show", "m").json["manifest"]["metadata"]
    assert "parameter_count" not in meta and meta["dtypes"] == ["F32"]
