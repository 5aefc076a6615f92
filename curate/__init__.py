"""curate: data-centric curation of image-text pretraining data.

Importing curate does nothing but define names: no registration, no global state,
no logging configuration.
"""

__version__ = "0.1.0"

from .errors import ConfigError, CurateError, InputError, MissingExtraError, QueryError, StoreError
from .store import Store, open_store

__all__ = [
    "Store", "open_store", "CurateError", "ConfigError", "InputError", "StoreError", "MissingExtraError",
    "QueryError", "__version__",
]
