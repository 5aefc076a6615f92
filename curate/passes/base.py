"""The pass contract.

A *pass* is a whole-corpus operation (caption dedup, semantic dedup, near and exact
duplicate images, tags, the target filter, an index, the caption merge, a vocabulary or
published-counts import): unlike a stage (:mod:`curate.stages.base`) it does not map
batches of rows independently, so the runner cannot resume it; it reads what it needs,
computes, and writes its whole result in one transaction with its ``runs`` row
(:mod:`curate.runs`). A rerun of the same configuration replaces or re-adds nothing
more than the engine does (each engine documents its rule).

A pass is a small frozen dataclass whose fields are its configuration, built from a
plain dict by :func:`curate.config.from_dict` (:meth:`Pass.from_config`), like a stage.
It declares

* ``name`` and ``version``: the registry name is ``f"{name}.v{version}"``
  (:data:`curate.registry.PASSES`);
* ``run_stage`` (optional): the ``runs.stage`` its rows carry when that is not the
  registry name (the vocabulary and published imports store ``concepts.vocabulary`` and
  ``concepts.import_published``, as they always have);
* ``writes``: the tables it writes (the first is its main output);
* ``attributes``: what it produces that a mixing policy can select on
  (:class:`curate.attributes.Attribute`; read with :func:`curate.attributes.declared`);
* ``produced_by``: how a user makes its output, for messages ("caption dedup (curate
  dedup captions)");
* ``path_fields`` (optional): config fields holding file paths, which a pipeline
  resolves against its own folder;
* ``preflight()``: cheap checks that the pass can run here (an extra is installed, a
  file exists), called before a pipeline starts any work;
* ``run(store)``: calls the engine function with the configuration and returns its
  result, which has ``run_id`` and ``summary()`` (:class:`PassResult`).

The engine functions (``dedup_captions``, ``semdedup``, ...) stay the API for code that
calls them directly; a pass class is a thin shell that holds their arguments.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from ..attributes import Attribute
from ..config import Configured, to_dict

if TYPE_CHECKING:
    from ..store import Store


@runtime_checkable
class PassResult(Protocol):
    """What every pass returns: the id of its ``runs`` row (None when there was nothing
    to do and no run was recorded) and a summary for the user (its first line fits a
    log line)."""

    run_id: int | None

    def summary(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class Pass(Configured):
    name: ClassVar[str]
    version: ClassVar[int]
    #: the tables the pass writes (the first is its main output)
    writes: ClassVar[tuple[str, ...]]
    #: what a mixing policy can select on (see curate.attributes)
    attributes: ClassVar[tuple[Attribute, ...]] = ()
    #: how a user makes this pass's output
    produced_by: ClassVar[str]
    #: the runs.stage its rows carry, when not the registry name
    run_stage: ClassVar[str | None] = None
    #: config fields that hold file paths (a pipeline resolves them against its folder)
    path_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def stored_stage(cls) -> str:
        """The ``runs.stage`` of this pass's runs."""
        return cls.run_stage or cls.registry_name()

    def preflight(self) -> None:
        """Fail early (a ConfigError or MissingExtraError naming the fix) when the pass
        cannot run here."""

    def run(self, store: Store) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- configuration -------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The configuration as plain values (lists, strings), as a pipeline writes it."""
        out: dict[str, Any] = to_dict(self)  # a dataclass instance: always a dict
        return out

