"""cas: a git-backed, content-addressed artifact store for ML model files.

The public API::

    from cas import Store, AddOptions
    store = Store.init("/data/cas")            # or Store.open(...), or open_store()
    result = store.add("org/model", "model-dir", AddOptions(message="v1", tags=["prod"]))
    store.checkout("org/model@prod", "out/")
    assert store.verify("org/model").ok

Library code never prints or exits; errors are :class:`cas.errors.CasError` subclasses with
stable codes. Names are imported lazily, so ``import cas`` stays cheap for short commands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cas.errors import CasError
    from cas.ingest import AddOptions, AddResult
    from cas.store import Store, default_store_path, open_store

__all__ = ["AddOptions", "AddResult", "CasError", "Store", "default_store_path", "open_store"]
__version__ = "0.1.0"

_HOMES = {
    "AddOptions": "cas.ingest",
    "AddResult": "cas.ingest",
    "CasError": "cas.errors",
    "Store": "cas.store",
    "default_store_path": "cas.store",
    "open_store": "cas.store",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'cas' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(home), name)
