"""``cas-verify-lock``: cas.lock is valid and every version it names exists, in the local
store or at the cas remote, with the file sizes and SHA-256 it records.

A pre-commit hook (``pass_filenames: false``; runs when cas.lock is among the committed
files). The store is ``git config cas.store`` or the default one (``$CAS_HOME`` ...); the
remote ``git config cas.remote`` or the lock's ``remote`` field, asked only about versions the
store lacks. Exit status 1 with one line per problem.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from cas.codelock import FILE_NAME, find_root, read, remote_of, verify_lock
    from cas.errors import CasError, NotFoundError
    from cas.prepush import store_path
    from cas.store import Store

    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        sys.stdout.write(__doc__ or "")
        return 0
    root = find_root()
    try:
        lock = read(root)
    except NotFoundError:
        return 0  # the commit deletes cas.lock, or there never was one
    except CasError as exc:
        sys.stdout.write(f"{exc.message} [{exc.code}]\n")
        return 1
    try:
        try:
            store: Store | None = Store.open(store_path(root))
        except NotFoundError:
            store = None
        try:
            problems = verify_lock(store, lock, remote_of(root, lock))
        finally:
            if store is not None:
                store.close()
    except CasError as exc:
        sys.stdout.write(f"{FILE_NAME}: {exc.message} [{exc.code}]\n")
        return 1
    for p in problems:
        sys.stdout.write(f"{FILE_NAME}: {p.path}: {p.message}\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
