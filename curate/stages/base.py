"""The stage contract.

A stage is a small frozen dataclass whose fields are its configuration. It declares

* ``name`` and ``version``: the registry name is ``f"{name}.v{version}"``;
* ``input_table`` and ``key``: rows of the input are identified by ``key``
  (``caption_id`` for caption stages, ``uid`` for sample stages);
* ``reads``: the input columns it needs (besides the key);
* ``output_table`` and ``output_schema``: the attribute table it appends to and the
  columns it writes (besides the key; the runner adds ``stage``, ``config_hash`` and
  ``run_id``);
* ``input_order`` (optional): a column to feed rows ordered by, e.g. ``text`` so that
  repeated texts meet in one batch and are computed once;
* ``views`` (optional): ``CREATE OR REPLACE VIEW`` statements over the output table,
  (re)created with it (e.g. one row per entity from a list column);
* ``latest_view``, ``latest_by`` (optional): a view of the rows of the latest
  configuration run (per ``latest_by`` config field), from the one template
  :func:`curate.attributes.latest_sql`;
* ``attributes`` (optional): what a mixing policy can select on
  (:class:`curate.attributes.Attribute`), and ``produced_by``, how a user makes them;
* ``preflight()``: cheap checks that the stage can run (a model is installed, ...),
  called before a run or pipeline starts any work;
* ``prepare(store)``: fills in store content the stage needs (e.g. a vocabulary);
* ``setup()``: loads models once per worker (never at import or construction);
* ``input_relation()`` (optional): a SELECT that replaces ``input_table`` as the input
  (key + reads), for a stage whose row joins several captions of a sample (generation's
  ``fuse``: the raw and the synthetic caption), built from checked config values;
* ``companion_statements()`` (optional): SQL run in each batch's transaction after its
  rows are appended, reading the batch as ``_curate_batch`` (with ``stage``,
  ``config_hash``, ``run_id``): generation stages add the captions they wrote this way,
  so a caption row and the row that explains it commit together or not at all;
* ``__call__(batch)``: maps an Arrow record batch (key + reads) to an Arrow table or
  record batch (key + output columns). Rows may be dropped only by returning a row
  with NULL outputs, never silently: the runner checks every input key comes back.

The maths lives in plain functions the stage calls, so they are testable alone.
Nothing in a stage may assume whether it runs in-process, in a process pool or on Ray.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, ClassVar

import pyarrow as pa

from ..attributes import Attribute, latest_view
from ..config import Configured

if TYPE_CHECKING:
    from ..store import Store


@dataclasses.dataclass(frozen=True)
class Stage(Configured):
    name: ClassVar[str]
    version: ClassVar[int]
    input_table: ClassVar[str] = "captions"
    key: ClassVar[str] = "caption_id"
    reads: ClassVar[tuple[str, ...]] = ()
    output_table: ClassVar[str]
    output_schema: ClassVar[pa.Schema]
    #: An optional SQL filter on the input (a WHERE clause over its columns, no values).
    input_filter: ClassVar[str | None] = None
    #: An optional input column to feed rows ordered by.
    input_order: ClassVar[str | None] = None
    #: CREATE OR REPLACE VIEW statements over the output table (after the latest view).
    views: ClassVar[tuple[str, ...]] = ()
    #: a view of the latest rows (curate.attributes.latest_sql), created with the table
    latest_view: ClassVar[str | None] = None
    #: its columns (``k``: the output table, ``c``: the caption the row is about)
    latest_columns: ClassVar[str] = "c.uid, c.source, c.variant, k.*"
    #: config fields that each have their own latest run (e.g. a CLIP model id)
    latest_by: ClassVar[tuple[str, ...]] = ()
    #: what a mixing policy can select on (curate.attributes.Attribute)
    attributes: ClassVar[tuple[Attribute, ...]] = ()
    #: rows per committed batch in a pipeline step that does not say (None: the runner's)
    default_batch_size: ClassVar[int | None] = None

    def preferred_batch_size(self) -> int | None:
        """Rows per committed batch when the step does not say (None: the runner's);
        ``default_batch_size`` unless the configuration changes it."""
        return self.default_batch_size
    #: how a user makes the output table, said when a policy needs it and it is missing
    produced_by: ClassVar[str | None] = None
    #: config fields holding file paths, which a pipeline resolves against its own folder
    path_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def view_statements(cls) -> tuple[str, ...]:
        """The views created with the output table: the latest view, then ``views``."""
        latest = () if cls.latest_view is None else (latest_view(
            cls.latest_view, cls.output_table, cls.registry_name(), by=cls.latest_by, columns=cls.latest_columns),)
        return (*latest, *cls.views)

    def input_relation(self) -> str:
        """The input as SQL: the input table, or a SELECT of the key and the reads."""
        from ..store import check_identifier, quote_ident

        return quote_ident(check_identifier(self.input_table))

    def companion_statements(self) -> tuple[str, ...]:
        """Statements run in each batch's transaction after its rows are appended."""
        return ()

    def batch_counts(self, out: pa.Table) -> dict[str, float]:
        """Counters of a result batch the progress bar shows as rates (e.g. tokens)."""
        return {}

    def preflight(self) -> None:
        """Fail early (a ConfigError naming the fix) when the stage cannot run here."""

    def prepare(self, store: Store) -> Stage:
        """The stage to run against ``store``: a stage whose input depends on the store
        (e.g. a vocabulary table) returns a copy with that content filled in, so it is
        part of the config hash and reaches the workers. Called once, in the runner."""
        return self

    def setup(self) -> None:
        """Load models and other heavy state; called once per worker before any batch."""

    def __call__(self, batch: pa.RecordBatch) -> pa.Table | pa.RecordBatch:  # pragma: no cover - abstract
        raise NotImplementedError
