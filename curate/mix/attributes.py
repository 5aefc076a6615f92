"""The attributes a policy can select on: a catalogue built from what the registered
stages and passes declare (:mod:`curate.attributes`), plus the sample's ``source`` and
``has_image``.

Nothing here is written by hand per attribute: a stage (or pass) lists its attributes,
its registry line makes it known, and :func:`catalogue` picks it up, with the producer
named when its table is missing. The docs table (``docs/mixing.md``) is
:func:`markdown_table` of the same catalogue (a test keeps them equal).

CLIP scores come from ``clip.score.v1`` (``curate embed``), read through its view
``clip_scores_latest``; a ``clip_scores`` table from another tool works when it meets
:data:`curate.mix.sql.CLIP_CONTRACT`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .. import registry
from ..attributes import Attribute, declared
from ..errors import ConfigError
from .sql import bind_includes, lit, named

if TYPE_CHECKING:
    from ..passes.base import Pass
    from ..stages.base import Stage

__all__ = ["ATTRIBUTES", "Attribute", "catalogue", "check_value", "lit", "markdown_table", "named", "producer_of",
           "relation"]

#: the one attribute no stage produces: the sample's source (ingest --source)
SOURCE = Attribute("source", "sample", "str", "the sample's source (ingest --source)",
                   sql="SELECT uid, source AS value FROM samples", table="samples", latest="always current")

#: whether the sample has stored image bytes: a local file (``image_path``) or an
#: img2dataset shard member (``image_shard`` + ``image_key``). A failed download leaves
#: neither, so this is "downloaded" for downloaded sources; decoding is checked where the
#: bytes are read (``curate shards --verify-images``, the CLIP stages).
HAS_IMAGE = Attribute("has_image", "sample", "bool",
                      "the sample has stored image bytes (a local file or an img2dataset shard member)",
                      sql="SELECT uid, (image_path IS NOT NULL OR (image_shard IS NOT NULL AND image_key IS NOT NULL)) "
                          "AS value FROM samples", table="samples", latest="always current")

_cache: dict[tuple[tuple[str, str], ...], dict[str, Attribute]] = {}


def _producers() -> list[type[Stage] | type[Pass]]:
    out: list[type[Stage] | type[Pass]] = [registry.get_stage_class(n) for n in registry.stage_names()]
    out += [registry.get_pass_class(n) for n in registry.pass_names()]
    return out


def catalogue() -> dict[str, Attribute]:
    """name -> Attribute, from every registered stage and pass (cached per registry
    content, so a stage registered at run time is seen at once)."""
    key = tuple(sorted(registry.STAGES.items())) + tuple(sorted(registry.PASSES.items()))
    if key not in _cache:
        out = {SOURCE.name: SOURCE, HAS_IMAGE.name: HAS_IMAGE}
        for producer in _producers():
            for a in declared(producer):
                if a.name in out:
                    raise ConfigError(f"attribute {a.name!r} is declared by both {out[a.name].producer} and "
                                      f"{a.producer}")
                out[a.name] = a
        _cache.clear()
        _cache[key] = out
    return _cache[key]


class _Catalogue(Mapping[str, Attribute]):
    """``ATTRIBUTES[name]``: a live view of :func:`catalogue`."""

    def __getitem__(self, name: str) -> Attribute:
        return catalogue()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(catalogue())

    def __len__(self) -> int:
        return len(catalogue())


ATTRIBUTES: Mapping[str, Attribute] = _Catalogue()


def producer_class(table: str) -> Any | None:
    """The registered stage or pass that writes ``table``, or None."""
    for producer in _producers():
        if table in (getattr(producer, "output_table", None), *getattr(producer, "writes", ())):
            return producer
    return None


def producer_of(table: str) -> str:
    """What produces ``table`` (said when a policy needs it and it is missing)."""
    producer = producer_class(table)
    if producer is None:
        return f"no registered stage or pass (table {table})"
    return getattr(producer, "produced_by", None) or f"the stage {producer.registry_name()}"


def check_value(attr: Attribute, op: str, value: Any) -> None:
    """``attr op value`` makes sense for the attribute's type, or a ConfigError."""
    if op in ("in", "not_in"):
        if not isinstance(value, tuple) or not value:
            raise ConfigError(f"{attr.name}: op {op} needs a non-empty list value, got {value!r}")
        items = value
    else:
        if isinstance(value, tuple):
            raise ConfigError(f"{attr.name}: a list value needs op in or not_in, got {op!r}")
        items = (value,)
    for v in items:
        ok = {"number": isinstance(v, (int, float)) and not isinstance(v, bool),
              "bool": isinstance(v, bool), "str": isinstance(v, str)}[attr.type]
        if not ok:
            raise ConfigError(f"{attr.name} is {attr.type}; got {type(v).__name__} {v!r}")
    if attr.type == "bool" and op not in ("=", "!="):
        raise ConfigError(f"{attr.name} is true/false: use op = or !=, got {op!r}")
    if attr.type == "str" and op not in ("=", "!=", "in", "not_in"):
        raise ConfigError(f"{attr.name} is text: use op =, !=, in or not_in, got {op!r}")


def relation(attr: Attribute, pred: Any = None, model: str | None = None) -> str:
    """SQL of the (caption_id | uid, value) rows of ``attr``, its parameters bound from
    the predicate (``vocabulary``, ``mode``) and the resolved CLIP ``model``."""
    params: dict[str, Any] = {}
    for p in attr.params:
        params[p] = model if p == "model" else getattr(pred, p, None)
    return f"({bind_includes(attr.sql or '', **params)})"


def markdown_table() -> str:
    """The attribute table of ``docs/mixing.md``: every attribute, its key, type,
    default, producer and doc."""
    rows = ["| attribute | key | type | default | produced by | meaning |", "|---|---|---|---|---|---|"]
    for a in sorted(catalogue().values(), key=lambda a: (a.producer or "", a.name)):
        default = "" if a.default is None else f"`{lit(a.default)}`"
        params = f" (takes {', '.join(a.params)})" if a.params else ""
        latest = f"; rows of {a.latest}" if a.latest and a.column else ""
        rows.append(f"| `{a.name}` | {a.key} | {a.type} | {default} | {a.producer or 'ingest'} | "
                    f"{a.doc}{params}{latest} |")
    return "\n".join(rows)


def write_docs(path: str = "docs/mixing.md") -> None:
    """Replace the attribute table between the markers of ``path`` with :func:`markdown_table`."""
    from pathlib import Path

    p = Path(path)
    text = p.read_text(encoding="utf-8")
    start, end = "<!-- attributes:start -->\n", "<!-- attributes:end -->"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    p.write_text(head + start + markdown_table() + "\n" + end + tail, encoding="utf-8")


if __name__ == "__main__":  # python -m curate.mix.attributes --write-docs
    import sys

    if sys.argv[1:] == ["--write-docs"]:
        write_docs()
    else:
        print(markdown_table())
