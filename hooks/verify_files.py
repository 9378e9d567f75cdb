"""``cas-verify-files``: the model files at cas.lock's paths match their recorded SHA-256.

A pre-commit hook (``pass_filenames: false``, ``always_run: true``: the model files are not
tracked by git, so no staged file says when to run). Checks the working tree of the
repository the current folder is in; unchanged files are recognised by a stat cache under the
git dir (:mod:`cas.lockcheck`). Imports only the standard library when cas.lock is unchanged.
Exit status 1 with one line per bad file; 0 when all match or there is no cas.lock.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from cas.lockcheck import find_repo, verify_files

    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        sys.stdout.write(__doc__ or "")
        return 0
    root, git_dir = find_repo(Path.cwd())
    _, problems = verify_files(root, git_dir)
    for line in problems:
        sys.stdout.write(f"{line}\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
