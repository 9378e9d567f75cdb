"""A real OpenSSH server on a loopback port, started by the test that needs it.

Debian's ``openssh-server`` (``.ci/run`` installs it), run by absolute path with its own
config, host key and ``authorized_keys`` in a temp folder. Two client keys: ``key`` logs in
with any command (the client names ``cas serve --stdio PATH``); ``forced_key`` gets the forced
command ``cas serve --stdio --restrict-to ROOT`` as an ``authorized_keys`` entry of a backup
host would. Both run this interpreter's cas.
"""

from __future__ import annotations

import getpass
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    def __init__(self, root: Path, restrict_to: Path, address: str = "127.0.0.1",
                 prefix: tuple[str, ...] = (), reachable: Callable[[int], bool] | None = None
                 ) -> None:
        """``address``: where to listen; ``prefix``: what to run sshd under (``ip netns exec
        NS`` for a host of its own); ``reachable(port)``: whether it accepts connections yet
        (default: a connection from here)."""
        self.root = root
        self.address = address
        self.port = _free_port()
        self.user = getpass.getuser()
        self.cas = f"{shlex.quote(sys.executable)} -m cas.cli.main"
        for name in ("hostkey", "key", "forced_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(root / name)], check=True)
        forced = (f'command="{self.cas} serve --stdio --restrict-to {restrict_to}",restrict '
                  + (root / "forced_key.pub").read_text())
        (root / "authorized_keys").write_text((root / "key.pub").read_text() + forced)
        config = root / "sshd_config"
        config.write_text(
            f"ListenAddress {address}\nPort {self.port}\nHostKey {root / 'hostkey'}\n"
            f"PidFile {root / 'sshd.pid'}\nAuthorizedKeysFile {root / 'authorized_keys'}\n"
            "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "LogLevel ERROR\n")
        self.log = open(root / "sshd.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([*prefix, SSHD, "-D", "-e", "-f", str(config)],
                                     stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while True:  # readiness: the port accepts connections
            try:
                if reachable is not None:
                    if not reachable(self.port):
                        raise OSError("not yet")
                else:
                    socket.create_connection((address, self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("sshd did not start: "
                                       + (root / "sshd.log").read_text(errors="replace"))
                time.sleep(0.05)

    def ssh_command(self, key: str = "key") -> str:
        """A ``CAS_SSH`` value that logs in with client key ``key`` non-interactively."""
        return (f"ssh -o BatchMode=yes -o StrictHostKeyChecking=no "
                f"-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "
                f"-i {self.root / key}")

    def url(self, path: Path) -> str:
        return f"ssh://{self.user}@{self.address}:{self.port}{path}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def require_sshd() -> None:
    if not os.access(SSHD, os.X_OK):
        pytest.skip(f"{SSHD} is not installed (Debian openssh-server; .ci/run installs it)")
    privsep = Path("/run/sshd")  # sshd's privilege separation folder (the package makes it)
    if not privsep.is_dir():
        try:
            privsep.mkdir(mode=0o755, parents=True)
        except OSError as exc:
            pytest.skip(f"sshd needs {privsep}: {exc}")
