"""Caption statistics: word and character counts per caption.

Words are maximal runs of non-whitespace (Python's ``str.split()``), the measure
behind published mean caption lengths (e.g. BLIP3-KALE, arXiv 2411.07461, Table 1:
8.99 words for LAION-COCO, 22.74 for CapsFusion-120M). Characters are Unicode code
points.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from ..attributes import Attribute
from .base import Stage


def word_counts(texts: pa.Array) -> pa.Array:
    """Whitespace-separated word counts, equal to ``len(text.split())``; NULL gives NULL.

    Arrow's split yields an empty first/last piece for leading/trailing whitespace, so
    the text is trimmed first, and an all-whitespace text counts 0 words."""
    trimmed = pc.utf8_trim_whitespace(texts)
    n = pc.list_value_length(pc.utf8_split_whitespace(trimmed))
    return pc.if_else(pc.equal(trimmed, ""), 0, n).cast(pa.int32())


def char_counts(texts: pa.Array) -> pa.Array:
    return pc.utf8_length(texts).cast(pa.int32())


@dataclasses.dataclass(frozen=True)
class CaptionStats(Stage):
    name: ClassVar[str] = "text.caption_stats"
    version: ClassVar[int] = 1
    reads: ClassVar[tuple[str, ...]] = ("text",)
    output_table: ClassVar[str] = "caption_stats"
    output_schema: ClassVar[pa.Schema] = pa.schema([("words", pa.int32()), ("chars", pa.int32())])
    attributes: ClassVar[tuple[Attribute, ...]] = (
        Attribute("words", "caption", "number", "words of the caption (caption_stats)", column="words"),
        Attribute("chars", "caption", "number", "characters of the caption (caption_stats)", column="chars"),
    )
    produced_by: ClassVar[str | None] = "the stage text.caption_stats.v1 (curate run pipelines/caption_stats.toml)"

    def __call__(self, batch: pa.RecordBatch) -> pa.Table:
        texts = batch.column("text")
        return pa.table({"caption_id": batch.column("caption_id"), "words": word_counts(texts),
                         "chars": char_counts(texts)})
