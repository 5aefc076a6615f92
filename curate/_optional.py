"""Optional dependencies: import them when a stage is built, or fail with the exact
install command (never at ``import curate``)."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

#: import name -> (pip package, curate extra)
KNOWN = {
    "spacy": ("spacy", "nlp"),
    "open_clip": ("open_clip_torch", "clip"),
    "torch": ("torch", "clip"),
    "faiss": ("faiss-cpu", "index"),
    "datasketch": ("datasketch", "dedup"),
    "matplotlib": ("matplotlib", "plot"),
    "img2dataset": ("img2dataset", "download"),
    "ray": ("ray", "ray"),
    "httpx": ("httpx", "generate"),
    "transformers": ("transformers", "caption"),
    "huggingface_hub": ("huggingface_hub", "caption"),
    "PIL": ("pillow", "caption"),
}


def require(module: str, *, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package, extra = KNOWN.get(module, (module, None))
        how = f"pip install 'curate[{extra}]'  (or: pip install '{package}')" if extra else f"pip install '{package}'"
        raise MissingExtraError(f"{purpose} needs the Python package {package!r} ({e}); install it with: {how}") from None
