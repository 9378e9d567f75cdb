"""The one exception hierarchy of cas.

Every error a user can cause or meet (bad input, missing object, corrupt data, full disk, a held
lock) is a :class:`CasError` subclass with a stable string ``code`` and a stable process exit code.
Codes and exit codes are never reused, even after an error is retired. Anything that is not a
``CasError`` is a bug and is shown as one.

Where a built-in exception has the same meaning, the class also inherits it (as huggingface_hub
does), so ``except FileNotFoundError`` keeps working for callers that know nothing of cas.
"""

from __future__ import annotations

import msgspec


class CasError(Exception):
    """Base of all cas errors.

    Attributes:
        code: stable identifier such as ``E_NOT_FOUND``; part of the JSON output contract.
        exit_code: stable process exit code used by the CLI.
        message: one line for a human.
    """

    code = "E_CAS"
    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class ArgsError(CasError, ValueError):
    """The caller passed an invalid argument: a bad name, path, version or option."""

    code = "E_ARGS"
    exit_code = 2


class NotFoundError(CasError, LookupError):
    """A store, model, version, tag, chunk or file does not exist."""

    code = "E_NOT_FOUND"
    exit_code = 3


class VerifyError(CasError):
    """Bytes do not match the hash that names them, or recorded sizes disagree.

    Attributes:
        object_id: hex id of the object that failed, when known.
        expected: what the record says (hash or size), as text.
        actual: what the bytes say, as text.
    """

    code = "E_VERIFY"
    exit_code = 4

    def __init__(
        self,
        message: str,
        *,
        object_id: str | None = None,
        expected: str | None = None,
        actual: str | None = None,
    ) -> None:
        super().__init__(message)
        self.object_id = object_id
        self.expected = expected
        self.actual = actual


class SchemaError(CasError, ValueError):
    """A manifest, config or binary record is malformed or of an unknown version."""

    code = "E_SCHEMA"
    exit_code = 5


class DiskError(CasError, OSError):
    """The filesystem refused a write or read (full disk, I/O error)."""

    code = "E_DISK"
    exit_code = 6


class NetError(CasError, ConnectionError):
    """A remote could not be reached or broke off (used by sync)."""

    code = "E_NET"
    exit_code = 7


class PermError(CasError, PermissionError):
    """The operating system denied access to a store or a file."""

    code = "E_PERM"
    exit_code = 8


class LockError(CasError):
    """Another writer holds the store lock and did not release it in time."""

    code = "E_LOCK"
    exit_code = 9


class ConflictError(CasError):
    """The operation conflicts with existing state (a ref moved, a name collides, a tag exists)."""

    code = "E_CONFLICT"
    exit_code = 10


class FormatError(CasError):
    """The store was written by a format version this build does not know."""

    code = "E_FORMAT"
    exit_code = 11


class LicenseError(CasError):
    """The version's licence requires an acceptance that is not recorded (``cas license
    NAME@V --accept``, or ``--accept-license`` on the command)."""

    code = "E_LICENSE"
    exit_code = 12


class Interrupted(CasError):
    """The user interrupted the command (Ctrl-C); nothing half-written is visible."""

    code = "E_INTERRUPTED"
    exit_code = 130


class CasWarning(msgspec.Struct, frozen=True):
    """Something the user should know that did not stop the command (an unparseable weight
    header, a skipped dangling symlink, metadata an unchanged ``add`` did not record).

    Results carry a list of these under ``warnings``; the CLI prints each as one line on stderr
    (``cas: warning: MESSAGE [W_CODE]``), and ``--json`` keeps them in the document. Codes start
    with ``W_`` and are stable like error codes.
    """

    code: str
    message: str


#: Exit code for a bug (an exception that is not a CasError).
BUG_EXIT_CODE = 70

ALL_ERRORS: tuple[type[CasError], ...] = (
    ArgsError,
    NotFoundError,
    VerifyError,
    SchemaError,
    DiskError,
    NetError,
    PermError,
    LockError,
    ConflictError,
    FormatError,
    LicenseError,
    Interrupted,
)


def error_of_code(code: str, message: str) -> CasError:
    """A CasError of the class whose code is ``code`` (``E_SCHEMA`` for a code not known), for
    reporting again an error recorded in a result (a model ``ls`` or ``du`` could not read)."""
    for cls in ALL_ERRORS:
        if cls.code == code:
            return cls(message)
    return SchemaError(message)


def from_os_error(exc: OSError, what: str) -> CasError:
    """Translate an OSError met while doing ``what`` into the matching CasError.

    Full disk and I/O errors become ``E_DISK``, permission problems ``E_PERM``, a missing file
    ``E_NOT_FOUND``. The message names the operation and the path, on one line.
    """
    import errno

    where = f"{what}: {exc.strerror or exc}"
    if exc.filename:
        where += f" ({exc.filename})"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermError(where)
    if exc.errno == errno.ENOENT:
        return NotFoundError(where)
    return DiskError(where)
