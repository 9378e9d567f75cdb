"""cas license: acceptance records in the registry; checkout and export refuse E_LICENSE."""

from __future__ import annotations

import subprocess


def _model(cas, tmp_path, name="meta/llama-tiny", licence="llama3", extra=()):
    src = tmp_path / name.replace("/", "_")
    src.mkdir()
    (src / "w.gguf").write_bytes(b"GGUF" + b"\1" * 200)
    cas("add", name, str(src), "--license", licence, *extra)


def test_marked_licence_blocks_until_accepted(cas, tmp_path, store_path, git):
    _model(cas, tmp_path)
    st = cas("--json", "license", "meta/llama-tiny").json
    assert st["license"] == "llama3" and st["requires"] == [] and st["accepted"] is None
    cas("checkout", "meta/llama-tiny", str(tmp_path / "free"))  # not marked: allowed
    assert cas("--json", "license", "--require", "LLAMA3").json["changed"]
    dest = tmp_path / "co"
    for args in (["checkout", "meta/llama-tiny", str(dest)],
                 ["export", "meta/llama-tiny", "--layout", str(tmp_path / "models")],
                 ["export", "meta/llama-tiny", "--hf-cache", str(tmp_path / "hf")],
                 ["export", "meta/llama-tiny", "--ollama", str(tmp_path / "ol")]):
        r = cas("--json", *args, ok=False)
        assert r.json["error"]["code"] == "E_LICENSE" and r.code == 12, args
    assert not dest.exists() and not (tmp_path / "models").exists()
    cas.env["CAS_AUTHOR"] = "Ada <ada@example.org>"
    acc = cas("--json", "license", "meta/llama-tiny", "--accept").json
    assert acc["recorded"] and acc["accepted"]["by"] == "Ada <ada@example.org>"
    assert acc["accepted"]["at"].endswith("+00:00")
    cas("checkout", "meta/llama-tiny", str(dest))
    assert not cas("--json", "license", "meta/llama-tiny", "--accept").json["recorded"]
    # the audit trail is plain git history of refs/cas/licenses
    log = subprocess.run([git, "--git-dir", str(store_path / "registry"), "log", "--format=%s",
                          "refs/cas/licenses"], capture_output=True, text=True).stdout
    assert log.splitlines() == ["license --accept meta/llama-tiny: llama3",
                                "license --require LLAMA3"]


def test_accept_license_flag_records_and_proceeds(cas, tmp_path):
    _model(cas, tmp_path)
    cas("license", "--require", "llama3")
    cas("checkout", "meta/llama-tiny", str(tmp_path / "co"), "--accept-license")
    assert cas("--json", "license", "meta/llama-tiny").json["accepted"] is not None
    # another model under the same licence needs its own acceptance
    _model(cas, tmp_path, "meta/llama-other")
    r = cas("--json", "export", "meta/llama-other", "--layout", str(tmp_path / "m"), ok=False)
    assert r.json["error"]["code"] == "E_LICENSE"
    cas("export", "meta/llama-other", "--layout", str(tmp_path / "m"), "--accept-license")


def test_gated_hub_version_requires_acceptance(cas, tmp_path):
    _model(cas, tmp_path, "org/gated", "other", ("--meta", "hf.gated=manual"))
    st = cas("--json", "license", "org/gated").json
    assert st["requires"] == ["gated"]
    r = cas("--json", "checkout", "org/gated", str(tmp_path / "co"), ok=False)
    assert r.json["error"]["code"] == "E_LICENSE"
    cas("license", "org/gated", "--accept")
    cas("checkout", "org/gated", str(tmp_path / "co"))


def test_license_arguments_and_unrequire(cas, tmp_path):
    _model(cas, tmp_path)
    r = cas("--json", "license", "meta/llama-tiny", "--accept", ok=False)
    assert r.json["error"]["code"] == "E_ARGS"  # nothing requires acceptance
    assert cas("--json", "license", "--unrequire", "llama3", ok=False).json["error"][
        "code"] == "E_NOT_FOUND"
    cas("license", "--require", "llama3")
    assert cas("--json", "license", "--require", "llama3").json["changed"] is False
    cas("license", "--unrequire", "llama3")
    cas("checkout", "meta/llama-tiny", str(tmp_path / "co"))
