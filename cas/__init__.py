"""cas: a git-backed, content-addressed artifact store for ML model files.

The public API::

    from cas import Store, AddOptions
    store = Store.init("/data/cas")            # or Store.open(...), or open_store()
    result = store.add("org/model", "model-dir", AddOptions(message="v1", tags=["prod"]))
    store.checkout("org/model@prod", "out/")
    assert store.verify("org/model").ok

Library code never prints or exits; errors are :class:`cas.errors.CasError` subclasses with
stable codes.
"""

from cas.errors import CasError
from cas.ingest import AddOptions, AddResult
from cas.store import Store, default_store_path, open_store

__all__ = ["AddOptions", "AddResult", "CasError", "Store", "default_store_path", "open_store"]
__version__ = "0.1.0"
