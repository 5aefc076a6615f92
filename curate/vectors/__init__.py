"""Embedding sets: L2-normalised float16 vectors in the store's ``vectors/`` folder.

Layout (clip-retrieval's, so FAISS and clip-retrieval tools can memory-map it)::

    vectors/<name>/meta.json                      model, dim, kind, variant, count, dtype, normalised, shards
    vectors/<name>/img_emb/img_emb_<i>.npy        float16 (rows, dim), L2-normalised  (text sets: text_emb/)
    vectors/<name>/metadata/metadata_<i>.parquet  one id column in the same row order

Shard numbers are zero-padded to the digits of the shard count, as clip-retrieval's
writer pads them (``img_emb_00.npy`` ... ``img_emb_11.npy`` for 12 shards), so readers
that sort names as strings read them in row order; ``meta.json`` lists them in order.

The id column is ``uid`` for image sets (``samples.uid``), ``caption_id`` for text sets
(``captions.caption_id``) and ``concept`` (free text) for concept sets, such as the text
embeddings of a tag vocabulary. Ids are stored as canonical UUID strings whatever form
they came in; exports write ``uid`` as 32 hex digits, the form ``curate mix`` writes.
Every set is registered in the ``vector_sets`` table (created by :func:`ensure_table`,
not by a migration). A set's name is its folder name: :func:`check_name` checks it and
:func:`set_path` joins it with :func:`curate.names.under`.

The package is split by responsibility, and every public name is re-exported here
(``from curate.vectors import open_set, write_set, ...``):

* :mod:`curate.vectors.read`: the layout's constants, the ``vector_sets`` table,
  :class:`VectorSet` (memory-mapped block reads), :func:`open_set`, listing;
* :mod:`curate.vectors.write`: validated atomic writes (:func:`write_set`,
  :class:`Block`, :class:`WriteResult`) and :func:`drop_set`;
* :mod:`curate.vectors.exchange`: clip-retrieval, DataComp and plain ``.npy`` importers
  (every input file checked, one :class:`~curate.errors.InputError` line naming a bad
  one) and the clip-retrieval (one set, or image and text combined) and DataComp exporters.
"""

from __future__ import annotations

from .exchange import (
    DATACOMP_KEYS,
    export_clip_retrieval,
    export_datacomp,
    import_clip_retrieval,
    import_datacomp,
    import_npy,
    load_npy,
    read_ids,
)
from .read import (
    EMB_DIR,
    ID_COLUMN,
    KINDS,
    TABLE_SQL,
    VectorSet,
    check_name,
    ensure_table,
    list_sets,
    open_set,
    set_path,
    sets_table,
)
from .write import DEFAULT_SHARD_ROWS, NORM_TOL, Block, WriteResult, canonical_uuids, drop_set, shard_width, write_set

__all__ = [
    "DATACOMP_KEYS", "DEFAULT_SHARD_ROWS", "EMB_DIR", "ID_COLUMN", "KINDS", "NORM_TOL", "TABLE_SQL",
    "Block", "VectorSet", "WriteResult",
    "canonical_uuids", "check_name", "drop_set", "ensure_table", "export_clip_retrieval", "export_datacomp",
    "import_clip_retrieval", "import_datacomp", "import_npy", "list_sets", "load_npy", "open_set", "read_ids",
    "set_path", "sets_table", "shard_width", "write_set",
]
