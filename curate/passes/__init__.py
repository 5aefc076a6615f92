"""Whole-corpus passes: the contract (:mod:`curate.passes.base`) and thin pass classes
over the engines (:mod:`curate.passes.dedup`, :mod:`curate.passes.similarity`,
:mod:`curate.passes.concepts`). The registry (:data:`curate.registry.PASSES`) names
them; importing this package imports no engine.
"""

from .base import Pass, PassResult

__all__ = ["Pass", "PassResult"]
