"""The concept import passes: a vocabulary into ``concepts``
(:func:`curate.concepts.vocab.add_vocabulary`) and the published counts of Udandarao et
al. 2024 (:func:`curate.concepts.published.import_published`).

Their runs rows keep the stage strings they always had, without a version:
``concepts.vocabulary`` (registry name ``concepts.vocabulary.v1``) and
``concepts.import_published`` (``concepts.import_published.v1``); see ``run_stage``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

from ..concepts.published import STAGE as PUBLISHED_STAGE
from ..concepts.vocab import STAGE as VOCABULARY_STAGE
from .base import Pass

if TYPE_CHECKING:
    from ..store import Store


@dataclasses.dataclass(frozen=True)
class Vocabulary(Pass):
    """Store vocabulary ``vocabulary`` read from ``source`` (a bundled name or a
    TXT/CSV/TSV/JSON file). The same content again is a no-op (no run, ``run_id``
    None); different content under an existing name needs ``replace = true``."""

    name: ClassVar[str] = "concepts.vocabulary"
    version: ClassVar[int] = 1
    run_stage: ClassVar[str | None] = VOCABULARY_STAGE
    writes: ClassVar[tuple[str, ...]] = ("concepts",)
    produced_by: ClassVar[str] = "a vocabulary import (curate concepts vocab add NAME SOURCE)"
    path_fields: ClassVar[tuple[str, ...]] = ("source",)

    vocabulary: str
    source: str
    replace: bool = False

    def __post_init__(self) -> None:
        from ..concepts.vocab import check_name

        check_name(self.vocabulary)

    def preflight(self) -> None:
        from ..concepts.vocab import read_source

        read_source(self.source)  # every input error before any work

    def run(self, store: Store) -> Any:
        from ..concepts.vocab import add_vocabulary

        return add_vocabulary(store, self.vocabulary, self.source, replace=self.replace)


@dataclasses.dataclass(frozen=True)
class ImportPublished(Pass):
    """Replace the published count tables with the contents of ``path`` (the
    nozeroshot-frequencies folder, its ``search_counts/`` folder, or
    ``derived_counts_long.parquet``). A rerun replaces the rows with the same rows."""

    name: ClassVar[str] = "concepts.import_published"
    version: ClassVar[int] = 1
    run_stage: ClassVar[str | None] = PUBLISHED_STAGE
    writes: ClassVar[tuple[str, ...]] = ("published_concept_counts", "published_misalignment")
    produced_by: ClassVar[str] = "the published-counts import (curate concepts import-published PATH)"
    path_fields: ClassVar[tuple[str, ...]] = ("path",)

    path: str

    def preflight(self) -> None:
        from ..concepts.published import locate

        locate(self.path)

    def run(self, store: Store) -> Any:
        from ..concepts.published import import_published

        return import_published(store, self.path)
