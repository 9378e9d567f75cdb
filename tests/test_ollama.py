"""Ollama store export and import, checked against Ollama's own layout rules.

No Ollama binary can be had here, so the layout is the contract. The reader below
(``ollama_get_model``) and the fixture writer (``ollama_create``) follow Ollama's source at
commit fb30760996871fa9460115c753afd2c60d4ab0f7 (github.com/ollama/ollama):

* ``envconfig/config.go`` ``Models()``: ``$OLLAMA_MODELS``, else ``~/.ollama/models``;
* ``types/model/name.go``: ``ParseName`` (defaults ``registry.ollama.ai``, ``library``,
  ``latest``), ``isValidPart``, ``Filepath`` = ``host/namespace/model/tag``;
* ``manifest/paths.go`` ``BlobsPath``: only ``^sha256[:-][0-9a-fA-F]{64}$``, ``:`` -> ``-``;
* ``manifest/manifest.go`` ``ParseNamedManifest`` (digest = SHA-256 of the manifest bytes)
  and ``WriteManifest`` (schemaVersion 2, Docker's v2 media type, Go ``json.Encoder``);
* ``manifest/layer.go`` ``NewLayer``: temp ``blobs/sha256-*``, hash, rename, chmod 0644;
* ``server/create.go`` ``createConfigLayer``/``createModel`` (ConfigV2 fields and the
  ``linux``/``amd64`` constants), ``server/images.go`` ``GetModel`` (media types read).

The GGUF is converted from the real model (all-MiniLM-L6-v2) with the PyPI ``gguf`` writer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

GO_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"))


def go_encode(value) -> bytes:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for c, e in GO_ESCAPES:
        text = text.replace(c, e)
    return text.encode() + b"\n"


def parse_name(s: str) -> tuple[str, str, str, str]:
    tag = ""
    if s.rfind(":") > s.rfind("/"):
        s, _, tag = s.rpartition(":")
    parts = s.split("/")
    host, ns = "registry.ollama.ai", "library"
    if len(parts) == 3:
        host, ns, model = parts
    elif len(parts) == 2:
        ns, model = parts
    else:
        (model,) = parts
    return host, ns, model, tag or "latest"


def blobs_path(root: Path, digest: str) -> Path:
    assert re.fullmatch(r"sha256[:-][0-9a-fA-F]{64}", digest), digest
    return root / "blobs" / digest.replace(":", "-")


def ollama_get_model(root: Path, name: str) -> dict:
    """GetModel: the manifest by name, the config, each layer by media type; every blob
    must hash to its digest (what a pull verifies)."""
    path = root / "manifests" / "/".join(parse_name(name))
    data = path.read_bytes()
    m = json.loads(data)
    assert m["schemaVersion"] == 2
    assert m["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    out = {"digest": hashlib.sha256(data).hexdigest(), "layers": {}, "licenses": []}
    for layer in [m["config"], *m["layers"]]:
        blob = blobs_path(root, layer["digest"])
        body = blob.read_bytes()
        assert len(body) == layer["size"]
        assert "sha256:" + hashlib.sha256(body).hexdigest() == layer["digest"]
        assert blob.stat().st_mode & 0o777 == 0o644
    out["config"] = json.loads(blobs_path(root, m["config"]["digest"]).read_bytes())
    for layer in m["layers"]:
        mt = layer["mediaType"]
        body = blobs_path(root, layer["digest"]).read_bytes()
        if mt == "application/vnd.ollama.image.model":
            out["model_path"] = blobs_path(root, layer["digest"])
            assert body[:4] == b"GGUF"
        elif mt == "application/vnd.ollama.image.license":
            out["licenses"].append(body.decode())
        else:
            out["layers"][mt] = body
    return out


def ollama_create(root: Path, name: str, layers: list[tuple[str, bytes]], config: dict) -> str:
    """What ``ollama create`` leaves: blobs via NewLayer, then WriteManifest."""
    (root / "blobs").mkdir(parents=True, exist_ok=True)

    def new_layer(data: bytes, media: str) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blob = blobs_path(root, digest)
        if not blob.exists():
            tmp = root / "blobs" / "sha256-123456789"
            tmp.write_bytes(data)
            tmp.rename(blob)
            blob.chmod(0o644)
        return {"mediaType": media, "digest": digest, "size": len(data)}

    out = [new_layer(d, m) for m, d in layers]
    cfg = new_layer(go_encode(config), "application/vnd.docker.container.image.v1+json")
    path = root / "manifests" / "/".join(parse_name(name))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(go_encode({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": cfg, "layers": out}))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def real_gguf(real_model, tmp_path_factory) -> Path:
    """The real model converted to an F16 GGUF with the gguf package's GGUFWriter."""
    import numpy as np
    from gguf import GGUFWriter, LlamaFileType
    from safetensors.numpy import load_file

    cfg = json.loads((real_model / "config.json").read_text())
    out = tmp_path_factory.mktemp("gguf") / "all-minilm-l6-v2-f16.gguf"
    w = GGUFWriter(str(out), "bert")
    w.add_name("all-MiniLM-L6-v2")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_layer_norm_eps(cfg["layer_norm_eps"])
    w.add_file_type(LlamaFileType.MOSTLY_F16)
    tensors = load_file(str(real_model / "model.safetensors"))
    params = 0
    for name in sorted(tensors):
        a = tensors[name]
        params += a.size
        w.add_tensor(name, a.astype(np.float16) if a.ndim > 1 else a.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    (out.parent / "params").write_text(str(params))
    return out


@pytest.fixture
def gguf_version(cas, real_gguf, tmp_path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    os.link(real_gguf, src / "model.gguf")
    (src / "template").write_text("{{ .System }} <s>{{ .Prompt }}</s>")
    (src / "params.json").write_bytes(go_encode({"stop": ["</s>"], "temperature": 0.2}))
    cas("add", "team/minilm-gguf", str(src), "--license", "apache-2.0")
    return src


def test_export_is_what_ollama_reads(cas, gguf_version, real_gguf, tmp_path):
    root = tmp_path / "ollama"
    r = cas("--json", "export", "team/minilm-gguf", "--ollama", str(root)).json
    assert r["ollama_name"] == "team/minilm-gguf:latest"
    model = ollama_get_model(root, "team/minilm-gguf")
    assert model["digest"] == r["digest"]
    assert model["model_path"].read_bytes() == real_gguf.read_bytes()
    assert model["layers"]["application/vnd.ollama.image.template"] == \
        (gguf_version / "template").read_bytes()
    assert json.loads(model["layers"]["application/vnd.ollama.image.params"]) == \
        {"stop": ["</s>"], "temperature": 0.2}
    assert model["licenses"] == ["apache-2.0"]
    params = int((real_gguf.parent / "params").read_text())
    assert model["config"] == {
        "model_format": "gguf", "model_family": "bert", "model_families": ["bert"],
        "model_type": f"{params / 1e6:.2f}M", "file_type": "F16", "architecture": "amd64",
        "os": "linux"}
    manifest = (root / "manifests/registry.ollama.ai/team/minilm-gguf/latest").read_bytes()
    assert manifest == go_encode(json.loads(manifest))  # Go's encoding, byte for byte
    assert [p.name for p in (root / "blobs").iterdir() if not re.fullmatch(
        r"sha256-[0-9a-f]{64}", p.name)] == []  # no temp left

    again = cas("--json", "export", "team/minilm-gguf", "--ollama", str(root)).json
    assert again["digest"] == r["digest"] and again["blobs_written"] == 0


def test_export_names_and_refusals(cas, gguf_version, real_model, tmp_path):
    root = tmp_path / "ollama"
    cas("export", "team/minilm-gguf", "--ollama", str(root), "--as", "minilm:f16")
    assert ollama_get_model(root, "minilm:f16")["licenses"] == ["apache-2.0"]
    assert (root / "manifests/registry.ollama.ai/library/minilm/f16").is_file()
    bad = cas("--json", "export", "team/minilm-gguf", "--ollama", str(root), "--as",
              "../x:1", ok=False)
    assert bad.json["error"]["code"] == "E_ARGS"
    cas("add", "st/minilm", str(real_model))
    r = cas("--json", "export", "st/minilm", "--ollama", str(root), ok=False)
    assert r.json["error"]["code"] == "E_ARGS" and "GGUF" in r.json["error"]["message"]
    # a blob planted under the model's digest with other bytes is replaced, not trusted
    blob = next(p for p in (root / "blobs").iterdir() if p.stat().st_size > 1 << 20)
    blob.chmod(0o644)
    blob.write_bytes(b"\0" * blob.stat().st_size)
    cas("export", "team/minilm-gguf", "--ollama", str(root), "--as", "minilm:f16")
    assert ollama_get_model(root, "minilm:f16")


def test_import_from_ollama_store_and_back(cas, real_gguf, tmp_path):
    root = tmp_path / "ollama"
    gguf = real_gguf.read_bytes()
    config = {"model_format": "gguf", "model_family": "bert", "model_families": ["bert"],
              "model_type": "23M", "file_type": "F16", "architecture": "amd64", "os": "linux"}
    licence = "Apache License 2.0 <https://www.apache.org/licenses/LICENSE-2.0> & more"
    digest = ollama_create(root, "minilm:f16", [
        ("application/vnd.ollama.image.model", gguf),
        ("application/vnd.ollama.image.license", licence.encode()),
        ("application/vnd.ollama.image.template", b"{{ .Prompt }}"),
        ("application/vnd.ollama.image.params", go_encode({"num_ctx": 256}))], config)
    ollama_create(root, "other/minilm:q", [("application/vnd.ollama.image.model", gguf)],
                  config)
    r = cas("--json", "import", "--ollama", str(root)).json
    by = {m["ollama_name"]: m for m in r["models"]}
    assert by["minilm:f16"]["status"] == "registered" and by["minilm:f16"]["name"] == \
        "library/minilm"
    assert by["other/minilm:q"]["name"] == "other/minilm"
    # the second model's weights deduplicate against the first's
    assert by["other/minilm:q"]["new_stored_bytes"] < 64 << 10
    show = cas("--json", "show", "library/minilm@f16").json
    assert sorted(f["path"] for f in show["manifest"]["files"]) == ["LICENSE", "model.gguf",
                                                         "params.json", "template"]
    assert cas("--json", "import", "--ollama", str(root), "minilm").json["models"][0][
        "status"] == "present"

    # exported to a fresh store, the model keeps its manifest digest
    out = tmp_path / "ollama2"
    e = cas("--json", "export", "library/minilm", "--ollama", str(out)).json
    assert e["digest"] == digest and e["ollama_name"] == "minilm:f16"
    assert ollama_get_model(out, "minilm:f16")["licenses"] == [licence]


def test_import_skips_damaged_and_refuses_unknown(cas, real_gguf, tmp_path):
    root = tmp_path / "ollama"
    ollama_create(root, "good:1", [("application/vnd.ollama.image.model", b"GGUF" + b"\0" * 60)],
                  {"model_format": "gguf"})
    ollama_create(root, "bad:1", [("application/vnd.ollama.image.model", b"GGUF" + b"\1" * 60)],
                  {"model_format": "gguf"})
    bad = json.loads((root / "manifests/registry.ollama.ai/library/bad/1").read_bytes())
    blob = blobs_path(root, bad["layers"][0]["digest"])
    blob.write_bytes(b"GGUF" + b"\2" * 60)  # same size, other bytes
    ollama_create(root, "tensors:1", [("application/vnd.ollama.image.tensor", b"x")], {})
    r = cas("--json", "import", "--ollama", str(root))
    st = {m["ollama_name"]: m["status"] for m in r.json["models"]}
    assert st == {"good:1": "registered", "bad:1": "skipped", "tensors:1": "skipped"}
    assert any(w["code"] == "W_OLLAMA_SKIPPED" and "bad" in w["message"]
               for w in r.json["warnings"])
    assert "library/bad" not in cas("--json", "ls").out
    missing = cas("--json", "import", "--ollama", str(root), "nosuch", ok=False)
    assert missing.json["error"]["code"] == "E_NOT_FOUND"
