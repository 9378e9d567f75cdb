"""The error table is a contract: codes and exit codes are unique and stable."""

from __future__ import annotations

from cas.errors import ALL_ERRORS, BUG_EXIT_CODE, CasError

STABLE = {  # never change or reuse these: scripts depend on them (README, "Errors")
    "E_ARGS": 2, "E_NOT_FOUND": 3, "E_VERIFY": 4, "E_SCHEMA": 5, "E_DISK": 6, "E_NET": 7,
    "E_PERM": 8, "E_LOCK": 9, "E_CONFLICT": 10, "E_FORMAT": 11, "E_LICENSE": 12,
    "E_INTERRUPTED": 130,
}


def test_codes_and_exit_codes_are_unique_and_stable():
    table = {cls.code: cls.exit_code for cls in ALL_ERRORS}
    assert table == STABLE
    assert len(set(table.values())) == len(table) and BUG_EXIT_CODE not in table.values()
    assert set(ALL_ERRORS) == set(CasError.__subclasses__())
    # a narrower error (PackGone: a pack deleted under a read) keeps its base's code
    for cls in _subclasses(CasError) - set(ALL_ERRORS):
        base = next(b for b in ALL_ERRORS if issubclass(cls, b))
        assert (cls.code, cls.exit_code) == (base.code, base.exit_code)


def _subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _subclasses(sub)
    return out
