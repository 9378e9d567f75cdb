"""annotate: metadata recorded after registration, as a new registry commit."""

from __future__ import annotations

from pathlib import Path


def _src(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    d.mkdir(exist_ok=True)
    (d / "w.bin").write_bytes(b"weights" * 1000)
    return d


def test_annotate_merges_metadata_keeps_files(cas, tmp_path):
    cas("add", "org/m", str(_src(tmp_path)), "--metric", "loss=0.5", "--meta", "team=nlp",
        "--tag", "prod")
    before = cas("--json", "show", "org/m").json
    r = cas("--json", "annotate", "org/m@prod", "--metric", "acc=0.91", "--license",
            "apache-2.0", "--run-id", "run-7", "--dataset", "c4@v2", "--code-rev", "abc123",
            "--env", "torch=2.5.1", "-m", "eval done").json
    assert r["seq"] == 1 and r["commit"] and set(r["changed"]) == {
        "metrics", "license", "provenance"}
    after = cas("--json", "show", "org/m").json
    md = after["manifest"]["metadata"]
    assert md["metrics"] == {"loss": 0.5, "acc": 0.91}
    assert md["extra"] == {"team": "nlp"} and md["license"] == "apache-2.0"
    assert md["provenance"] == {"run_id": "run-7", "datasets": ["c4@v2"],
                                "code_revision": "abc123", "environment": {"torch": "2.5.1"}}
    assert after["manifest"]["files"] == before["manifest"]["files"]
    assert after["commit"] == before["commit"]  # the version's identity does not move
    assert after["tags"] == ["prod"] and after["annotated_at"]
    history = cas("--json", "log", "org/m").json["history"]
    assert history[0]["action"] == "annotate" and "eval done" in history[0]["message"]
    assert "metric       acc = 0.91" in cas("show", "org/m").out
    assert cas("--json", "verify", "org/m").json["ok"]


def test_annotate_unset_and_idempotent(cas, tmp_path):
    cas("add", "org/m", str(_src(tmp_path)), "--metric", "loss=0.5")
    cas("annotate", "org/m", "--unset-metric", "loss", "--meta", "k=v")
    md = cas("--json", "show", "org/m").json["manifest"]["metadata"]
    assert "metrics" not in md and md["extra"] == {"k": "v"}
    n = len(cas("--json", "log", "org/m").json["history"])
    same = cas("--json", "annotate", "org/m", "--meta", "k=v").json
    assert same["commit"] is None and same["changed"] == []
    assert len(cas("--json", "log", "org/m").json["history"]) == n
    bad = cas("--json", "annotate", "org/m", "--unset-metric", "nope", ok=False).json
    assert bad["error"]["code"] == "E_ARGS"
    bad = cas("--json", "annotate", "org/m", "--metric", "x=nan", ok=False).json
    assert bad["error"]["code"] == "E_ARGS"


def test_annotate_removed_version_refused(cas, tmp_path):
    cas("add", "org/m", str(_src(tmp_path)))
    (tmp_path / "src" / "w.bin").write_bytes(b"other")
    cas("add", "org/m", str(tmp_path / "src"))
    cas("rm", "org/m@1")
    r = cas("--json", "annotate", "org/m@1", "--metric", "a=1", ok=False).json
    assert r["error"]["code"] == "E_NOT_FOUND" and "restore" in r["error"]["message"]


def test_add_records_provenance(cas, tmp_path):
    cas("add", "org/m", str(_src(tmp_path)), "--run-id", "r1", "--seed", "3",
        "--dataset", "a", "--dataset", "b@2")
    prov = cas("--json", "show", "org/m").json["manifest"]["metadata"]["provenance"]
    assert prov == {"run_id": "r1", "datasets": ["a", "b@2"], "seed": 3}


def test_unchanged_add_names_the_annotate_command_that_records_its_metadata(cas, tmp_path):
    """The warning of an unchanged add is a command that works as printed."""
    import shlex

    cas("add", "base/m", str(_src(tmp_path)))
    cas("add", "org/m", str(_src(tmp_path)))
    again = cas("--json", "add", "org/m", str(_src(tmp_path)), "-m", "eval run",
                "--metric", "acc=0.9", "--meta", "k=v w", "--license", "mit",
                "--source", "s3://bucket/run7", "--parent", "base/m", "--seed", "1",
                "--run-id", "r7", "--dataset", "c4", "--env", "torch=2.5").json
    assert not again["created"]
    [warning] = [w for w in again["warnings"] if w["code"] == "W_METADATA_NOT_RECORDED"]
    command = warning["message"].split("record them with: ", 1)[1]
    argv = shlex.split(command)
    assert argv[:3] == ["cas", "annotate", "org/m@1"]
    cas(*argv[1:])
    md = cas("--json", "show", "org/m").json["manifest"]["metadata"]
    assert md["metrics"] == {"acc": 0.9} and md["extra"] == {"k": "v w"}
    assert md["license"] == "mit" and md["source"] == "s3://bucket/run7"
    assert md["provenance"] == {"run_id": "r7", "datasets": ["c4"], "seed": 1,
                                "environment": {"torch": "2.5"}}
    assert cas("--json", "show", "org/m").json["parents"] == ["base/m@1"]
    # now the same add has nothing left to record
    quiet = cas("--json", "add", "org/m", str(_src(tmp_path)), "--metric", "acc=0.9").json
    assert not [w for w in quiet.get("warnings", []) if w["code"] == "W_METADATA_NOT_RECORDED"]


def test_a_version_cannot_be_its_own_parent(cas, tmp_path):
    cas("add", "org/m", str(_src(tmp_path)))
    r = cas("--json", "annotate", "org/m@1", "--parent", "org/m@1", ok=False).json
    assert r["error"]["code"] == "E_ARGS" and "own parent" in r["error"]["message"]
