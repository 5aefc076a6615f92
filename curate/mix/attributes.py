"""The attributes a policy can select on, the tables behind them, and the checks that run
against a store before any work.

Each attribute is a relation keyed by ``caption_id`` (a caption attribute) or ``uid``
(a sample attribute) with one ``value`` column, read from the latest configuration of
the table that holds it. A policy naming an attribute whose table is missing fails
with the stage (or command) that produces it.

CLIP scores come from ``clip.score.v1`` (``curate embed``), read through its view
``clip_scores_latest``; a ``clip_scores`` table from another tool works when it meets
:data:`CLIP_CONTRACT`: ``clip_scores(caption_id UUID, uid UUID, model VARCHAR, score
DOUBLE, ...)`` with one row per caption and model (cosine similarity of the image and
caption embeddings).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from ..errors import ConfigError
from ..sqlfiles import get_query

#: table -> what produces it (said when the table is missing)
PRODUCERS = {
    "caption_stats": "the stage text.caption_stats.v1 (curate run pipelines/caption_stats.toml)",
    "caption_knowledge": "the stage knowledge.spacy_ner.v1 (curate knowledge score)",
    "dedup_groups": "caption dedup (curate dedup captions)",
    "caption_concepts": "the stage concepts.text_match.v1 (curate concepts count --vocabulary NAME)",
    "clip_scores": "the CLIP embedding stage (curate embed ...), clip.score.v1; see docs/mixing.md for the table contract",
    "target_selection": "the target-distribution filter (curate similarity target SET REFERENCE)",
    "image_placeholders": "the exact-duplicate and placeholder scan (curate similarity exact)",
    "concept_tags": "zero-shot image tagging (curate concepts image-count, or curate similarity tag)",
}
#: the columns a clip_scores table must have (clip.score.v1 writes more)
CLIP_CONTRACT = {"caption_id": "UUID", "uid": "UUID", "model": "VARCHAR", "score": "DOUBLE"}


def lit(value: Any) -> str:
    """A SQL literal for a checked value (strings quoted, numbers as repr)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if value is None:
        return "NULL"
    raise TypeError(f"no SQL literal for {value!r}")


def bind(sql: str, params: dict[str, Any]) -> str:
    """Inline ``$name`` parameters of a named query as literals (the compiled SQL is
    then self-contained: it goes into the sidecar as it ran)."""
    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name not in params:
            raise ConfigError(f"parameter ${name} has no value")
        return lit(params[name])
    return re.sub(r"(?<![:$\w])\$([a-z_][a-z0-9_]*)", sub, sql, flags=re.I)


def named(qualname: str, **params: Any) -> str:
    q = get_query(qualname)
    return bind(q.sql, {**dict(q.defaults), **params})


def stats_latest() -> str:
    return ("(SELECT caption_id, words, chars FROM caption_stats WHERE config_hash = "
            "(SELECT config_hash FROM runs WHERE stage = 'text.caption_stats.v1' ORDER BY run_id DESC LIMIT 1))")


def clip_rel(model: str) -> str:
    """Scores of one model from ``clip_scores_latest``: the latest configuration run of
    each model label, rows whose image loaded (``status = 'ok'``); see
    :func:`ensure_clip_view` for stores whose ``clip_scores`` came from elsewhere."""
    return f"(SELECT caption_id, score AS value FROM clip_scores_latest WHERE model = {lit(model)} AND status = 'ok')"


def ensure_clip_view(store: Any) -> None:
    """Make ``clip_scores_latest`` readable on this connection. ``clip.score.v1`` creates
    it in the store (latest config per model, with a status per row). A ``clip_scores``
    table written to the contract by other tools (:data:`CLIP_CONTRACT`: one row per
    caption and model) gets a temporary view of the same name over it, every row
    ``ok`` unless the table has a ``status`` column; nothing is written to the store."""
    persistent = store.execute(
        "SELECT count(*) FROM duckdb_views() WHERE NOT internal AND NOT temporary AND view_name = 'clip_scores_latest' "
        "AND database_name = current_database()").fetchall()[0][0]
    if persistent:
        return
    status = "status" if "status" in store.columns("clip_scores") else "'ok'"
    store.con.execute("CREATE OR REPLACE TEMP VIEW clip_scores_latest AS "
                      f"SELECT caption_id, uid, model, score, {status} AS status FROM clip_scores")


@dataclasses.dataclass(frozen=True)
class Attribute:
    name: str
    level: str  # "caption" | "sample"
    type: str  # "number" | "bool" | "str"
    table: str | None
    doc: str
    default: Any = None
    needs_vocabulary: bool = False

    def check_value(self, op: str, value: Any) -> None:
        if op in ("in", "not_in"):
            if not isinstance(value, tuple) or not value:
                raise ConfigError(f"{self.name}: op {op} needs a non-empty list value, got {value!r}")
            items = value
        else:
            if isinstance(value, tuple):
                raise ConfigError(f"{self.name}: a list value needs op in or not_in, got {op!r}")
            items = (value,)
        for v in items:
            ok = {"number": isinstance(v, (int, float)) and not isinstance(v, bool),
                  "bool": isinstance(v, bool), "str": isinstance(v, str)}[self.type]
            if not ok:
                raise ConfigError(f"{self.name} is {self.type}; got {type(v).__name__} {v!r}")
        if self.type == "bool" and op not in ("=", "!="):
            raise ConfigError(f"{self.name} is true/false: use op = or !=, got {op!r}")
        if self.type == "str" and op not in ("=", "!=", "in", "not_in"):
            raise ConfigError(f"{self.name} is text: use op =, !=, in or not_in, got {op!r}")

    def relation(self, pred: Any) -> str:
        """SQL of (caption_id | uid, value) rows for this attribute."""
        n = self.name
        if n == "source":
            return "(SELECT uid, source AS value FROM samples)"
        # Only the latest run of each (kind, scope) counts: a rerun at another threshold
        # replaces the earlier verdicts instead of adding to them. Caption dedup records
        # every run in dedup_summary (also one that found no group); image dedup runs
        # are known by their groups.
        if n == "target_selected":
            return ("(SELECT uid, selected AS value FROM target_selection "
                    "WHERE run_id = (SELECT max(run_id) FROM target_selection))")
        if n == "placeholder_image":
            return ("(SELECT s.uid, true AS value FROM samples s JOIN image_placeholders p ON p.sha256 = s.sha256 "
                    "AND p.run_id = (SELECT max(run_id) FROM image_placeholders))")
        if n == "image_dedup_kept":
            return ("(SELECT g.member_id AS uid, bool_and(g.kept) AS value FROM dedup_groups g "
                    "JOIN (SELECT kind, scope, max(run_id) AS run_id FROM dedup_groups WHERE member_kind = 'uid' "
                    "GROUP BY kind, scope) l USING (kind, scope, run_id) "
                    "WHERE g.member_kind = 'uid' GROUP BY g.member_id)")
        if n == "dedup_kept":
            return ("(SELECT g.member_id AS caption_id, bool_and(g.kept) AS value FROM dedup_groups g "
                    "JOIN (SELECT kind, scope, max(run_id) AS run_id FROM dedup_summary GROUP BY kind, scope) l "
                    "USING (kind, scope, run_id) "
                    "WHERE g.member_kind = 'caption_id' GROUP BY g.member_id)")
        if n in ("words", "chars"):
            return f"(SELECT caption_id, {n} AS value FROM {stats_latest()})"
        if n == "clip_score":
            return clip_rel(pred.model)
        if n in ("n_knowledge", "knowledge_density", "knowledge_score"):
            col = {"n_knowledge": "n_knowledge", "knowledge_density": "density", "knowledge_score": "score"}[n]
            return f"(SELECT caption_id, {col} AS value FROM knowledge_latest WHERE status = 'ok')"
        if n in ("retention", "retained"):
            return f"(SELECT caption_id, {n} AS value FROM ({named('mix.caption_retention')}))"
        if n == "hallucinated":
            return f"(SELECT caption_id, hallucinated AS value FROM ({named('mix.caption_hallucinations')}))"
        if n == "n_concepts":
            return (f"(SELECT caption_id, count(*) AS value FROM concept_hits WHERE vocabulary = {lit(pred.vocabulary)} "
                    f"AND mode = {lit(pred.mode)} GROUP BY caption_id)")
        if n == "concept":
            return (f"(SELECT caption_id, concept AS value FROM concept_hits WHERE vocabulary = {lit(pred.vocabulary)} "
                    f"AND mode = {lit(pred.mode)})")
        raise AssertionError(n)  # pragma: no cover


_A = Attribute
ATTRIBUTES: dict[str, Attribute] = {a.name: a for a in (
    _A("source", "sample", "str", None, "the sample's source (ingest --source)"),
    _A("target_selected", "sample", "bool", "target_selection",
       "true when the sample's cluster was chosen by the latest target-distribution filter run "
       "(curate similarity target)"),
    _A("placeholder_image", "sample", "bool", "image_placeholders",
       "true when the sample's image bytes (sha256) are a placeholder of the latest placeholder scan",
       default=False),
    _A("image_dedup_kept", "sample", "bool", "dedup_groups",
       "false when the sample is a dropped member of an image duplicate group (member_kind 'uid') "
       "of the latest image dedup run of its kind and scope", default=True),
    _A("dedup_kept", "caption", "bool", "dedup_groups",
       "false when the caption is a dropped member of a caption duplicate group of the latest "
       "caption dedup run of its scope", default=True),
    _A("words", "caption", "number", "caption_stats", "words of the caption (caption_stats)"),
    _A("chars", "caption", "number", "caption_stats", "characters of the caption (caption_stats)"),
    _A("clip_score", "caption", "number", "clip_scores", "CLIP image-caption similarity (clip_scores.score)"),
    _A("n_knowledge", "caption", "number", "caption_knowledge", "distinct knowledge entities of the caption"),
    _A("knowledge_density", "caption", "number", "caption_knowledge", "knowledge entities per word"),
    _A("knowledge_score", "caption", "number", "caption_knowledge", "label-weighted knowledge entities"),
    _A("retention", "caption", "number", "caption_knowledge",
       "share of the raw caption's knowledge entities the caption keeps (1 when raw has none)"),
    _A("retained", "caption", "number", "caption_knowledge", "raw knowledge entities the caption keeps"),
    _A("hallucinated", "caption", "number", "caption_knowledge",
       "knowledge entities supported by neither the raw nor the synthetic caption"),
    _A("n_concepts", "caption", "number", "caption_concepts", "concepts of a vocabulary the caption names",
       default=0, needs_vocabulary=True),
    _A("concept", "caption", "str", "caption_concepts", "a concept the caption names (op = or in)",
       needs_vocabulary=True),
)}


# -- checks against a store ------------------------------------------------------------
def source_cond(policy: Any, alias: str) -> str:
    if policy.sources is None:
        return "true"
    return f"{alias}.source IN ({', '.join(lit(s) for s in policy.sources)})"


def required_tables(policy: Any) -> dict[str, str]:
    """table -> why the policy needs it."""
    from .policy import CapsFusion, KnowledgeAware, MetaCLIPWeight, Nguyen, TemperatureWeight

    need: dict[str, str] = {}
    for p in policy.select:
        t = ATTRIBUTES[p.attribute].table
        if t:
            need.setdefault(t, f"select attribute {p.attribute}")
    ch = policy.choose
    if isinstance(ch, Nguyen):
        need.setdefault("clip_scores", "choose strategy nguyen")
    if isinstance(ch, (CapsFusion, KnowledgeAware)):
        need.setdefault("caption_knowledge", f"choose strategy {ch.strategy}")
    if isinstance(policy.weight, (MetaCLIPWeight, TemperatureWeight)):
        need.setdefault("caption_concepts", f"weight method {policy.weight.method}")
        if policy.weight.counts == "matched":
            need.setdefault("concept_tags", f"weight method {policy.weight.method} with counts = \"matched\"")
    return need


def clip_model(store: Any, model: str | None, where: str) -> str:
    ensure_clip_view(store)
    models = [r[0] for r in store.execute("SELECT DISTINCT model FROM clip_scores_latest ORDER BY 1").fetchall()]
    if model is None:
        if len(models) != 1:
            raise ConfigError(f"{where}: clip_scores holds {len(models)} models ({', '.join(models) or 'none'}); "
                              "name one with model = ...")
        return models[0]
    if model not in models:
        raise ConfigError(f"{where}: clip_scores has no scores of model {model!r}; it has {', '.join(models) or 'none'}")
    return model


def check_policy(store: Any, policy: Any) -> dict[str, Any]:
    """Check ``policy`` against ``store`` before any work; return what was resolved
    (``clip_models`` per place). Raises ConfigError naming the stage to run."""
    from .policy import CapsFusion, KnowledgeAware, MetaCLIPWeight, Nguyen, TemperatureWeight

    tables = set(store.tables())
    views = {r[0] for r in store.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal AND database_name = current_database()").fetchall()}
    for table, why in required_tables(policy).items():
        if table not in tables:
            raise ConfigError(f"{why} needs attribute table {table}, which is missing; "
                              f"it is produced by {PRODUCERS[table]}")
    if "caption_knowledge" in required_tables(policy) and "knowledge_latest" not in views:
        raise ConfigError("knowledge views are missing; run the stage knowledge.spacy_ner.v1 once more to create them")
    if "clip_scores" in required_tables(policy):
        have = store.columns("clip_scores")
        missing = [c for c in CLIP_CONTRACT if c not in have]
        if missing:
            raise ConfigError(f"clip_scores lacks column(s) {', '.join(missing)}; the CLIP stage writes "
                              f"{', '.join(f'{k} {v}' for k, v in CLIP_CONTRACT.items())}")
    if "clip_scores" in required_tables(policy):
        ensure_clip_view(store)
    resolved: dict[str, Any] = {"clip_models": {}}
    for i, p in enumerate(policy.select):
        if p.attribute == "clip_score":
            resolved["clip_models"][f"select[{i}]"] = clip_model(store, p.model, f"select[{i}] clip_score")
    if isinstance(policy.choose, Nguyen):
        resolved["clip_models"]["choose"] = clip_model(store, policy.choose.model, "choose nguyen")

    known = {r[0] for r in store.execute("SELECT DISTINCT source FROM samples").fetchall()}
    if policy.sources is not None:
        unknown = sorted(set(policy.sources) - known)
        if unknown:
            raise ConfigError(f"policy.sources: unknown source(s) {', '.join(unknown)}; "
                              f"the store has {', '.join(sorted(known)) or 'none'}")
    if policy.budget.by == "source":
        unknown = sorted(set(policy.budget.proportions) - known)
        if unknown:
            raise ConfigError(f"budget.proportions: unknown source(s) {', '.join(unknown)}; "
                              f"the store has {', '.join(sorted(known)) or 'none'}")
    have_variants = {r[0] for r in store.execute(
        f"SELECT DISTINCT variant FROM captions c WHERE {source_cond(policy, 'c')}").fetchall()}
    wanted = set(policy.choose.emits()) | {p.variant for p in policy.select if p.variant}
    missing = sorted(wanted - have_variants)
    if missing:
        raise ConfigError(f"variant(s) {', '.join(missing)} have no captions in the pool; it has "
                          f"{', '.join(sorted(have_variants)) or 'none'}")

    vocabs = {(p.vocabulary, p.mode) for p in policy.select if p.vocabulary}
    if isinstance(policy.weight, (MetaCLIPWeight, TemperatureWeight)):
        vocabs.add((policy.weight.vocabulary, policy.weight.mode))
    for vocab, mode in sorted(vocabs):
        n = store.execute("SELECT count(*) FROM (SELECT 1 FROM caption_concepts WHERE vocabulary = ? AND mode = ? LIMIT 1)",
                          [vocab, mode]).fetchall()[0][0]
        if not n:
            raise ConfigError(f"no concept matches for vocabulary {vocab!r} (mode {mode}); run the stage "
                              f"concepts.text_match.v1 with vocabulary = {vocab!r}")

    w = policy.weight
    if isinstance(w, (MetaCLIPWeight, TemperatureWeight)) and w.counts == "matched":
        pairs = store.execute("SELECT DISTINCT set_name, concept_set FROM concept_tags ORDER BY 1, 2").fetchall()
        if (w.image_set, w.concept_set) not in pairs:
            have = "; ".join(f"image_set {a!r}, concept_set {b!r}" for a, b in pairs) or "none"
            raise ConfigError(f"weight {w.method}: concept_tags has no tags of image_set {w.image_set!r} and "
                              f"concept_set {w.concept_set!r}; it has {have}")

    if isinstance(policy.choose, (CapsFusion, KnowledgeAware)):
        vs = policy.choose.emits()
        n = store.execute(
            f"SELECT count(*) FROM captions c WHERE {source_cond(policy, 'c')} "
            f"AND c.variant IN ({', '.join(lit(v) for v in vs)}) "
            "AND c.caption_id NOT IN (SELECT caption_id FROM knowledge_latest)").fetchall()[0][0]
        if n:
            raise ConfigError(f"choose {policy.choose.strategy} needs knowledge scores for every caption of "
                              f"{', '.join(vs)} in the pool; {n:,} have none: run knowledge.spacy_ner.v1 "
                              "(curate knowledge score)")
    return resolved
