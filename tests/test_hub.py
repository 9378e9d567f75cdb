"""``cas import hf://...`` against real Hub servers on loopback: ``olah`` (offline, over git
mirrors built here) and, for resume and failures, the Range-capable test Hub."""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hubserver import HubFile, Olah, RangeHub, finetuned, mirror_repo, small_model

REPO = "org/mini"


def hub_env(cas, endpoint: str, home: Path) -> None:
    """Point the CLI's huggingface_hub at ``endpoint``, with a private HF_HOME (no token)."""
    cas.env.update({"HF_ENDPOINT": endpoint, "HF_HOME": str(home),
                    "HF_HUB_DISABLE_TELEMETRY": "1"})
    for k in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "CAS_OFFLINE"):
        cas.env.pop(k, None)


@pytest.fixture(scope="module")
def olah_hub(tmp_path_factory, real_model):
    root = tmp_path_factory.mktemp("olah")
    rev1 = small_model(real_model, seed=1)
    rev2 = finetuned(rev1)
    commits = mirror_repo(root / "mirrors", REPO, [rev1, rev2],
                          lfs=frozenset({"model.safetensors"}), tags={"v1": 0})
    with Olah(root / "mirrors", root / "work") as server:
        yield server, commits, rev1, rev2


@pytest.fixture
def hub_cas(cas, olah_hub, tmp_path):
    server, *_ = olah_hub
    hub_env(cas, server.url, tmp_path / "hfhome")
    return cas


def checked_out(cas, spec: str, dest: Path) -> dict[str, bytes]:
    cas("checkout", spec, str(dest))
    return {p.relative_to(dest).as_posix(): p.read_bytes()
            for p in sorted(dest.rglob("*")) if p.is_file()}


def test_import_records_source_and_licence_and_reimport_does_nothing(hub_cas, olah_hub,
                                                                     tmp_path, store_path):
    _, commits, rev1, _ = olah_hub
    r = hub_cas("--json", "import", f"hf://{REPO}@v1").json
    assert r["created"] and r["name"] == REPO and r["seq"] == 1
    assert r["source"] == f"hf://{REPO}@{commits[0]}" and r["hub_commit"] == commits[0]
    assert r["license"] == "apache-2.0"
    assert r["downloaded_bytes"] == sum(len(b) for b in rev1.values())
    assert checked_out(hub_cas, f"{REPO}@1", tmp_path / "co") == rev1
    show = hub_cas("--json", "show", f"{REPO}@1").json
    assert json.dumps(show).count(commits[0]) >= 1
    assert not (store_path.parent / "store.hub").exists(), "staging folder left behind"

    again = hub_cas("--json", "import", f"hf://{REPO}@{commits[0]}").json
    assert not again["created"] and again["downloaded_bytes"] == 0 and again["seq"] == 1
    assert "nothing to do" in hub_cas("import", f"hf://{REPO}@v1").out
    assert len(hub_cas("--json", "log", REPO).json["history"]) == 1


def test_new_revision_stores_only_what_changed(hub_cas, olah_hub):
    _, commits, rev1, _ = olah_hub
    first = hub_cas("--json", "import", f"hf://{REPO}@v1").json
    second = hub_cas("--json", "import", f"hf://{REPO}").json  # main: the fine-tune
    assert second["created"] and second["seq"] == 2 and second["hub_commit"] == commits[1]
    weights = len(rev1["model.safetensors"])
    assert first["new_stored_bytes"] > weights * 0.9
    # A 4 KiB edit touches one or two chunks, plus the config and the chunk lists.
    assert second["new_stored_bytes"] < weights * 0.25, second


def test_include_and_exclude_select_files(hub_cas, tmp_path):
    r = hub_cas("--json", "import", f"hf://{REPO}@v1", "org/mini-tok", "--include", "*.json",
                "--exclude", "tokenizer*").json
    assert r["files"] == 2 and r["excluded"] == 5 and r["name"] == "org/mini-tok"
    assert set(checked_out(hub_cas, "org/mini-tok", tmp_path / "co")) == {
        "config.json", "special_tokens_map.json"}
    # The same commit with another selection is a new import, not a no-op.
    r2 = hub_cas("--json", "import", f"hf://{REPO}@v1", "org/mini-tok", "--include",
                 "*.json").json
    assert r2["created"] and r2["files"] == 4
    bad = hub_cas("--json", "import", f"hf://{REPO}@v1", "--include", "*.nothing", ok=False)
    assert bad.code != 0 and bad.json["error"]["code"] == "E_ARGS"


@pytest.mark.parametrize("how", ["flag", "env", "hf-env"])
def test_offline_is_refused_before_anything(hub_cas, how):
    args = ["--json", "import", f"hf://{REPO}@v1"]
    if how == "flag":
        args.insert(0, "--offline")
    elif how == "env":
        hub_cas.env["CAS_OFFLINE"] = "1"
    else:
        hub_cas.env["HF_HUB_OFFLINE"] = "1"
    r = hub_cas(*args, ok=False)
    assert r.code != 0 and r.json["error"]["code"] == "E_NET", r.out
    assert hub_cas("--json", "ls").json["models"] == []


def test_missing_repository_and_revision(hub_cas):
    r = hub_cas("--json", "import", "hf://org/absent", ok=False)
    assert r.json["error"]["code"] == "E_NOT_FOUND"
    r = hub_cas("--json", "import", f"hf://{REPO}@no-such-branch", ok=False)
    assert r.json["error"]["code"] == "E_NOT_FOUND"
    r = hub_cas("--json", "import", "hf://../etc", ok=False)
    assert r.json["error"]["code"] == "E_ARGS"


# -- the Range-capable test Hub: failures and resume -------------------------------------------


@pytest.fixture
def range_hub(cas, tmp_path, real_model):
    hub = RangeHub(REPO)
    files = small_model(real_model, seed=3)
    hub.add_revision({p: HubFile(b, lfs=p == "model.safetensors") for p, b in files.items()})
    with hub:
        hub_env(cas, hub.url, tmp_path / "hfhome")
        yield hub, files


def test_corrupt_file_is_refused_and_nothing_registered(cas, range_hub, tmp_path):
    hub, files = range_hub
    bad = bytearray(files["model.safetensors"])
    bad[100] ^= 1
    hub.faults["model.safetensors"] = ("lie", bytes(bad))
    r = cas("--json", "import", f"hf://{REPO}", ok=False)
    assert r.json["error"]["code"] == "E_VERIFY", r.out
    assert "model.safetensors" in r.json["error"]["message"]
    assert cas("--json", "ls").json["models"] == []
    # The bad file is not kept: the next run fetches it again and succeeds.
    r = cas("--json", "import", f"hf://{REPO}").json
    assert r["created"]
    assert checked_out(cas, REPO, tmp_path / "co") == files


def test_small_file_checked_by_git_blob_id(cas, range_hub):
    hub, files = range_hub
    hub.faults["config.json"] = ("lie", files["config.json"].replace(b"{", b"[", 1))
    r = cas("--json", "import", f"hf://{REPO}", ok=False)
    assert r.json["error"]["code"] == "E_VERIFY" and "git blob id" in r.json["error"]["message"]
    assert cas("--json", "ls").json["models"] == []


@pytest.mark.parametrize("honour_range", [True, False])
def test_interrupted_download_resumes(cas, tmp_path, real_model, store_path, honour_range):
    hub = RangeHub(REPO)
    files = small_model(real_model, seed=4, size=24 << 20)
    hub.add_revision({p: HubFile(b, lfs=p == "model.safetensors") for p, b in files.items()})
    with hub:
        hub_env(cas, hub.url, tmp_path / "hfhome")
        # Killed at the first checkpoint: a prefix of the weights is durable in the store.
        report_r, report_w = os.pipe()
        resume_r, resume_w = os.pipe()
        env = {**cas.env, "CAS_TEST_PAUSE": "stream-checkpoint",
               "CAS_TEST_PAUSE_FDS": f"{report_w},{resume_r}"}
        proc = subprocess.Popen([sys.executable, "-m", "cas.cli.main", "--store",
                                 str(cas.store), "--json", "import", f"hf://{REPO}"],
                                env=env, pass_fds=(report_w, resume_r),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(report_w)
        os.close(resume_r)
        try:
            ready, _, _ = select.select([report_r], [], [], 120)
            assert ready and os.read(report_r, 100).strip() == b"stream-checkpoint"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            os.close(report_r)
            os.close(resume_w)
        assert cas("--json", "ls").json["models"] == []
        assert list((store_path / "cache" / "resume").glob("hub-*.json"))
        hub.gets.clear()
        hub.honour_range = honour_range
        r = cas("--json", "import", f"hf://{REPO}").json
    assert r["created"]
    ranges = [rng for path, rng in hub.gets if path == "model.safetensors" and rng]
    assert ranges and int(ranges[-1].split("=")[1].split("-")[0]) >= 8 << 20, hub.gets
    # Files finished before the kill are not downloaded again.
    assert "config.json" not in {path for path, _ in hub.gets}, hub.gets
    if honour_range:
        assert r["downloaded_bytes"] <= sum(len(b) for b in files.values()) - (8 << 20)
    # Else the server sent the whole file again: the bytes the store holds are dropped.
    assert checked_out(cas, REPO, tmp_path / "co") == files
    assert not list((store_path / "cache" / "resume").glob("*.json"))


def test_unsafe_path_in_repository_is_refused(cas, tmp_path):
    hub = RangeHub(REPO)
    hub.add_revision({"config.json": HubFile(b"{}"), "../escape.txt": HubFile(b"x")})
    with hub:
        hub_env(cas, hub.url, tmp_path / "hfhome")
        r = cas("--json", "import", f"hf://{REPO}", ok=False)
    assert r.json["error"]["code"] == "E_ARGS", r.out
    assert hub.gets == [] and not (tmp_path / "escape.txt").exists()


def test_not_enough_disk_is_refused_before_writing(cas, tmp_path, store_path):
    hub = RangeHub(REPO)
    hub.add_revision({"config.json": HubFile(b"{}"),
                      "model.safetensors": HubFile(b"\0" * 64, lfs=True,
                                                   claimed_size=1 << 60)})
    with hub:
        hub_env(cas, hub.url, tmp_path / "hfhome")
        r = cas("--json", "import", f"hf://{REPO}", ok=False)
    assert r.json["error"]["code"] == "E_DISK", r.out
    assert hub.gets == [] and not (store_path.parent / "store.hub").exists()


def test_token_from_environment_is_sent(cas, range_hub):
    hub, _ = range_hub
    cas.env["HF_TOKEN"] = "hf_testtoken"
    cas("--json", "import", f"hf://{REPO}")
    assert "Bearer hf_testtoken" in hub.auth


def test_a_gated_repository_needs_its_licence_accepted(cas, range_hub, tmp_path):
    hub, _ = range_hub
    hub.gated = "manual"
    doc = cas("--json", "import", f"hf://{REPO}", "gated/m").json
    extra = cas("--json", "show", "gated/m").json["manifest"]["metadata"]["extra"]
    assert extra["hf.gated"] == "manual"
    r = cas("--json", "checkout", "gated/m", str(tmp_path / "out"), ok=False)
    assert r.json["error"]["code"] == "E_LICENSE", doc
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    cas("license", "gated/m", "--accept")
    cas("checkout", "gated/m", str(tmp_path / "out"))
    hub.gated = False
    cas("--json", "import", f"hf://{REPO}", "open/m")
    extra = cas("--json", "show", "open/m").json["manifest"]["metadata"]["extra"]
    assert extra["hf.gated"] == "false"
    cas("checkout", "open/m", str(tmp_path / "out2"))


@pytest.mark.slow
def test_real_model_through_olah(cas, tmp_path, real_model):
    """The real all-MiniLM-L6-v2 snapshot, weights in git-lfs, through olah."""
    files = {p.relative_to(real_model).as_posix(): p.read_bytes()
             for p in sorted(real_model.rglob("*")) if p.is_file()}
    commits = mirror_repo(tmp_path / "mirrors", "sentence-transformers/all-MiniLM-L6-v2",
                          [files], lfs=frozenset({"model.safetensors"}))
    with Olah(tmp_path / "mirrors", tmp_path / "olah") as server:
        hub_env(cas, server.url, tmp_path / "hfhome")
        r = cas("--json", "import", "hf://sentence-transformers/all-MiniLM-L6-v2").json
    assert r["created"] and r["hub_commit"] == commits[0] and r["license"] == "apache-2.0"
    show = cas("--json", "show", "sentence-transformers/all-MiniLM-L6-v2").json
    text = json.dumps(show)
    assert "safetensors" in text
    got = checked_out(cas, "sentence-transformers/all-MiniLM-L6-v2", tmp_path / "co")
    assert hashlib.sha256(got["model.safetensors"]).digest() == \
        hashlib.sha256(files["model.safetensors"]).digest()
    assert got == files
