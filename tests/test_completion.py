"""Shell completion: the scripts ``cas completion`` prints, and click's completion protocol
(``_CAS_COMPLETE``, ``COMP_WORDS``, ``COMP_CWORD``) run against a real store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CAS = [sys.executable, "-m", "cas.cli.main"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("_CAS_", "COMP_"))}
    # The scripts run `cas`: the one installed next to this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def complete(line: str, shell: str = "bash", **env: str) -> list[str]:
    """What ``cas`` offers for the last word of ``line`` (empty after a trailing space)."""
    words = line.split(" ")
    # bash and zsh pass the index of the word being completed; fish passes the word itself.
    cword = words[-1] if shell == "fish" else str(len(words) - 1)
    proc = subprocess.run(CAS, capture_output=True, text=True, timeout=60, env=_env(
        _CAS_COMPLETE=f"{shell}_complete", COMP_WORDS=line, COMP_CWORD=cword, **env))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln]  # nothing to offer: one empty line
    if shell == "zsh":  # type, value, help: three lines per item
        return [lines[i + 1] for i in range(0, len(lines), 3)]
    if shell == "fish":  # type,value[<TAB>help]
        return [ln.split(",", 1)[1].split("\t")[0] for ln in lines]
    return [ln.split(",", 1)[1] for ln in lines]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store with two models (one with two versions and a tag) and a third name."""
    path = tmp_path / "store"
    src = tmp_path / "src"
    src.mkdir()

    def cas(*args: str) -> None:
        subprocess.run([*CAS, "--store", str(path), "--quiet", *args], check=True, timeout=120,
                       env=_env())

    cas("init")
    (src / "w.bin").write_bytes(b"one" * 1000)
    cas("add", "org/alpha", str(src), "--tag", "prod")
    (src / "w.bin").write_bytes(b"two" * 1000)
    cas("add", "org/alpha", str(src))
    cas("add", "org/beta", str(src))
    cas("add", "other/gamma", str(src))
    return path


def test_model_names(store: Path) -> None:
    s = str(store)
    assert complete(f"cas --store {s} show ") == ["org/alpha", "org/beta", "other/gamma"]
    assert complete(f"cas --store {s} show org/") == ["org/alpha", "org/beta"]
    assert complete(f"cas --store {s} log org/b") == ["org/beta"]
    assert complete(f"cas --store {s} du ot") == ["other/gamma"]
    assert complete(f"cas --store {s} add org/a") == ["org/alpha"]
    assert complete(f"cas --store {s} show x") == []


def test_versions_and_tags_after_at(store: Path) -> None:
    s = str(store)
    assert complete(f"cas --store {s} checkout org/alpha@") == \
        ["org/alpha@prod", "org/alpha@2", "org/alpha@1"]
    assert complete(f"cas --store {s} show org/alpha@p") == ["org/alpha@prod"]
    assert complete(f"cas --store {s} tag org/alpha@1") == ["org/alpha@1"]
    assert complete(f"cas --store {s} rm org/beta@") == ["org/beta@1"]
    assert complete(f"cas --store {s} verify org/nope@") == []
    assert complete(f"cas --store {s} add new/model dir --parent org/alpha@") == \
        ["org/alpha@prod", "org/alpha@2", "org/alpha@1"]


def test_store_after_the_command_and_the_default_store(store: Path, tmp_path: Path) -> None:
    assert complete(f"cas show --store {store} org/") == ["org/alpha", "org/beta"]
    assert complete("cas show org/", CAS_HOME=str(store)) == ["org/alpha", "org/beta"]
    # --store on the line wins over the default store.
    empty = tmp_path / "empty"
    subprocess.run([*CAS, "--store", str(empty), "init"], check=True, capture_output=True)
    assert complete(f"cas --store {empty} show ", CAS_HOME=str(store)) == []


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_other_shells_get_the_same_values(store: Path, shell: str) -> None:
    assert complete(f"cas --store {store} show org/alpha@", shell) == \
        ["org/alpha@prod", "org/alpha@2", "org/alpha@1"]


def test_no_store_or_a_damaged_one_gives_nothing_quietly(tmp_path: Path, store: Path) -> None:
    assert complete(f"cas --store {tmp_path / 'absent'} show ") == []
    assert complete("cas show ", CAS_HOME=str(tmp_path / "absent")) == []
    # A registry that is not a git repository at all.
    shutil.rmtree(store / "registry")
    (store / "registry").mkdir()
    (store / "registry" / "HEAD").write_text("garbage")
    assert complete(f"cas --store {store} show ") == []
    assert complete(f"cas --store {store} show org/alpha@") == []


def test_commands_and_options_complete_too() -> None:
    assert "completion" in complete("cas comp")
    assert complete("cas completion ") == ["bash", "zsh", "fish"]
    assert "--force" in complete("cas checkout --f")


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_script_completes_in_bash(store: Path) -> None:
    """The printed script loaded into a real bash, its completion function called as bash
    would call it on <TAB>."""
    script = subprocess.run([*CAS, "completion", "bash"], capture_output=True, text=True,
                            check=True, env=_env()).stdout
    probe = (script + "\nCOMP_WORDS=(cas --store \"$STORE\" show org/alpha@p)\n"
             "COMP_CWORD=4\n_cas_completion cas\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n"
             "complete -p cas\n")
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", probe], capture_output=True,
                         text=True, timeout=60, env=_env(STORE=str(store)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["org/alpha@prod",
                                       "complete -o nosort -F _cas_completion cas"]


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o nosort -F _cas_completion cas"),
                                           ("zsh", "#compdef cas"),
                                           ("fish", "complete --no-files --command cas")])
def test_completion_prints_the_script(shell: str, marker: str) -> None:
    out = subprocess.run([*CAS, "completion", shell], capture_output=True, text=True,
                         env=_env())
    assert out.returncode == 0, out.stderr
    assert marker in out.stdout and "_CAS_COMPLETE" in out.stdout
    doc = subprocess.run([*CAS, "completion", shell, "--json"], capture_output=True, text=True,
                         env=_env())
    import json

    assert json.loads(doc.stdout)["script"].strip() == out.stdout.strip()


def test_completion_refuses_an_unknown_shell() -> None:
    out = subprocess.run([*CAS, "--json", "completion", "tcsh"], capture_output=True,
                         text=True, env=_env())
    assert out.returncode == 2
    assert '"E_ARGS"' in out.stdout
