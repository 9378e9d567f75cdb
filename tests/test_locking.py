"""The store's writer lock: its timeout is validated before anything waits on it."""

from __future__ import annotations

import pytest

from cas.errors import ArgsError
from cas.locking import WriteLock


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "1e9"])
def test_unusable_lock_timeouts_are_refused(cas, value):
    r = cas("--json", "--lock-timeout", value, "ls", ok=False)
    assert r.code == 2 and r.json["error"]["code"] == "E_ARGS"
    assert "lock timeout" in r.json["error"]["message"]


def test_library_refuses_nan_too(tmp_path):
    with pytest.raises(ArgsError):
        WriteLock(tmp_path / "lock", float("nan"))
    with WriteLock(tmp_path / "lock", 0):
        pass  # 0 is valid: fail at once if held
