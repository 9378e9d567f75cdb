"""``cas-pre-push``: before git sends its refs, send to the cas remote the content of every
model version that cas.lock names in the pushed commits (:mod:`cas.prepush`).

Runs as a pre-commit ``pre-push`` stage hook (the range comes from ``PRE_COMMIT_FROM_REF`` and
``PRE_COMMIT_TO_REF``) or as git's own pre-push hook (``cas hooks install``; the refs come on
standard input, the git remote's name is the first argument). Exit status 1, which stops the
push, when a version cannot be sent: one line per version, saying why.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    from cas.codelock import find_root
    from cas.errors import CasError
    from cas.prepush import ranges_from_env, ranges_from_stdin, send_locked

    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        sys.stdout.write(__doc__ or "")
        return 0
    root = find_root()
    try:
        ranges = ranges_from_env()
        git_remote = os.environ.get("PRE_COMMIT_REMOTE_NAME", "")
        if ranges is None:
            ranges = ranges_from_stdin(sys.stdin.read() if not sys.stdin.isatty() else "")
            git_remote = args[0] if args else ""
        results = send_locked(root, ranges, git_remote)
    except CasError as exc:
        sys.stderr.write(f"cas pre-push: {exc.message} [{exc.code}]\n")
        return 1
    failed = False
    for r in results:
        for w in r.warnings:
            sys.stderr.write(f"cas pre-push: warning: {w.message} [{w.code}]\n")
        for line in r.problems:
            sys.stderr.write(f"cas pre-push: {line}\n")
            failed = True
        if r.versions and not r.problems:
            sys.stderr.write(f"cas pre-push: {len(r.versions)} locked model version(s) at "
                             f"the cas remote {r.remote!r} ({r.objects_sent} objects, "
                             f"{r.bytes_sent} bytes sent)\n")
    if failed:
        sys.stderr.write("cas pre-push: push stopped: the commits lock model versions that "
                         "whoever fetches them could not get (git push --no-verify skips "
                         "this check)\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
