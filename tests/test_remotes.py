"""Remote configuration (cas remote): URL kinds, names, the sealed remotes.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cas.errors import ArgsError
from cas.remotes import parse_url


@pytest.mark.parametrize("url, kind, host, user, port, path", [
    ("/data/cas", "dir", "", "", None, "/data/cas"),
    ("file:///data/cas", "dir", "", "", None, "/data/cas"),
    ("ssh://ml@train-03:2222/data/cas", "ssh", "train-03", "ml", 2222, "/data/cas"),
    ("ssh://train-03/srv/cas", "ssh", "train-03", "", None, "/srv/cas"),
    ("ml@train-03:/data/cas", "ssh", "train-03", "ml", None, "/data/cas"),
    ("train-03:cas", "ssh", "train-03", "", None, "cas"),
    ("https://cas.internal:8443/", "http", "cas.internal", "", 8443, "/"),
    ("http://10.0.0.5/", "http", "10.0.0.5", "", None, "/"),
])
def test_url_kinds(url, kind, host, user, port, path) -> None:  # type: ignore[no-untyped-def]
    u = parse_url(url)
    assert (u.kind, u.host, u.user, u.port, u.path) == (kind, host, user, port, path)


def test_relative_paths_are_stored_absolute(tmp_path: Path) -> None:
    u = parse_url("./drive/../usb", cwd=tmp_path)
    assert u.kind == "dir" and u.url == str(tmp_path / "usb")
    assert parse_url("sub/dir", cwd=tmp_path).url == str(tmp_path / "sub" / "dir")


@pytest.mark.parametrize("url", ["", "ftp://h/x", "ssh://h", "ssh://h/", "http://u:p@h/",
                                 "https://tok@h/", "host:", "ssh://h:99999/x", "a\x01b"])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ArgsError):
        parse_url(url)


def test_remote_commands(cas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    add = cas("--json", "remote", "add", "usb", str(tmp_path / "drive")).json
    assert add["kind"] == "dir" and add["url"] == str(tmp_path / "drive")
    cas("remote", "add", "train", "ml@train-03:/data/cas", "--cas-command", "/opt/cas/bin/cas")
    rows = cas("--json", "remote", "list").json["remotes"]
    assert [(r["name"], r["kind"]) for r in rows] == [("train", "ssh"), ("usb", "dir")]
    shown = cas("--json", "remote", "show", "train").json
    assert (shown["host"], shown["user"], shown["cas_command"]) == (
        "train-03", "ml", "/opt/cas/bin/cas")
    # a URL works where a name does
    assert cas("--json", "remote", "show", "https://h:1/").json["kind"] == "http"
    err = cas("--json", "remote", "add", "usb", "/x", ok=False).json["error"]
    assert err["code"] == "E_CONFLICT"
    err = cas("--json", "remote", "add", "d", "/x", "--cas-command", "c", ok=False).json["error"]
    assert err["code"] == "E_ARGS"
    for bad in ("-x", "a b", "x.lock", "a..b", ""):
        assert cas("--json", "remote", "add", bad, "/x", ok=False).json["error"]["code"] \
            in ("E_ARGS",), bad
    cas("remote", "remove", "usb")
    assert cas("--json", "remote", "remove", "usb", ok=False).json["error"]["code"] == \
        "E_NOT_FOUND"
    assert [r["name"] for r in cas("--json", "remote", "list").json["remotes"]] == ["train"]


def test_an_edited_remotes_file_is_refused(cas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cas("remote", "add", "usb", str(tmp_path / "drive"))
    path = cas.store / "remotes.json"
    doc = json.loads(path.read_text())
    assert doc["schema"] == "cas.remotes" and doc["version"] == 1 and "checksum" in doc
    doc["remotes"]["usb"]["url"] = "/somewhere/else"
    path.write_text(json.dumps(doc))
    err = cas("--json", "remote", "list", ok=False).json["error"]
    assert err["code"] == "E_VERIFY" and "remotes.json" in err["message"]
    path.write_text("[1, 2")
    assert cas("--json", "remote", "list", ok=False).json["error"]["code"] == "E_SCHEMA"
