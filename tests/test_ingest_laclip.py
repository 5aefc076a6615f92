"""LaCLIP rewrites: the real meta pairs (JSONL and written out as line-aligned files) and bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from curate import ConfigError, InputError
from curate.ids import sample_uid
from curate.ingest.laclip import ingest_laclip
from curate.ingest.tables import ingest_table, resolve_mapping
from tests.conftest import table_snapshot


@pytest.fixture(scope="module")
def pairs(laclip_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (laclip_dir / "meta_input_output_pairs.jsonl").read_text("utf-8").splitlines()]


@pytest.fixture
def aligned(tmp_path: Path, pairs: list[dict]) -> tuple[Path, Path, list[dict]]:
    """The 16 chatgpt pairs written the way LaCLIP releases rewrites: two line-aligned files."""
    chat = [p for p in pairs if p["strategy"] == "chatgpt"]
    originals, rewrites = tmp_path / "cc3m_source.txt", tmp_path / "cc3m_chatgpt.txt"
    originals.write_text("\n".join(p["source_caption"] for p in chat), encoding="utf-8")  # no final newline
    rewrites.write_text("".join(p["rewritten_caption"] + "\n" for p in chat), encoding="utf-8")
    return originals, rewrites, chat


@pytest.fixture
def cc3m_store(store, tmp_path, laclip_dir, pairs):
    """A store holding the originals as CC3M-style raw captions (source.txt plus the pairs' sources),
    ingested by the table reader; the first chatgpt source caption is there twice (two images)."""
    captions = (laclip_dir / "source.txt").read_text("utf-8").split("\n") + [p["source_caption"] for p in pairs]
    captions.append(pairs[0]["source_caption"])
    tsv = tmp_path / "cc3m.tsv"
    tsv.write_text("".join(f"{c}\thttps://example.org/cc3m/{i}.jpg\n" for i, c in enumerate(captions)), "utf-8")
    r = ingest_table(store, tsv, source="cc3m", mapping=resolve_mapping("cc3m"))
    assert r.samples_added == len(captions) == 116 + 48 + 1
    return store


def _reasons(store) -> list[tuple[str, str]]:
    rows = store.con.execute("SELECT row_ref, reason FROM rejects WHERE source = 'lc'").fetchall()
    return sorted((ref.rsplit(":", 1)[-1], reason) for ref, reason in rows)


def test_pairs_create_samples_from_the_originals(store, laclip_dir, pairs):
    originals = {p["source_caption"] for p in pairs}
    assert (len(pairs), len(originals)) == (48, 46)
    r = ingest_laclip(store, laclip_dir / "meta_input_output_pairs.jsonl", source="laclip", create=True)
    assert (r.samples_added, r.captions_added, r.rejected) == (46, 46 + 48, 0)
    assert r.by_variant == {"raw": 46, "rewrite": 48}
    assert r.extra == {"input lines": 48}
    styles = dict(store.con.execute(
        "SELECT provenance->>'style', count(*) FROM captions WHERE variant = 'rewrite' GROUP BY 1").fetchall())
    assert styles == Counter(p["strategy"] for p in pairs) == {"chatgpt": 16, "bard": 16, "human": 16}

    p = pairs[20]
    row = store.con.execute(
        "SELECT generator, provenance FROM captions WHERE variant = 'rewrite' AND uid = ? AND text = ?",
        [sample_uid("laclip", record=p["source_caption"]), p["rewritten_caption"]],
    ).fetchone()
    assert row[0] == f"LaCLIP {p['strategy']}"
    prov = json.loads(row[1])
    assert (prov["style"], prov["line"], prov["pair_index"], prov["rewrite_of"]) == (p["strategy"], 21, p["pair_index"], "raw")
    raw = store.con.execute("SELECT text, generator FROM captions WHERE variant = 'raw' AND uid = ?",
                            [sample_uid("laclip", record=p["source_caption"])]).fetchone()
    assert raw == (p["source_caption"], "alt-text")

    before = table_snapshot(store)
    again = ingest_laclip(store, laclip_dir / "meta_input_output_pairs.jsonl", source="laclip", create=True)
    assert (again.samples_added, again.captions_added) == (0, 0)
    after = table_snapshot(store)
    assert all(after[t] == before[t] for t in ("samples", "captions", "rejects"))


def test_pairs_without_create_need_the_originals_in_the_store(store, laclip_dir):
    before = table_snapshot(store)
    r = ingest_laclip(store, laclip_dir / "meta_input_output_pairs.jsonl", source="lc")
    assert (r.samples_added, r.captions_added) == (0, 0)
    assert r.reject_reasons == {"original not in store": 48}
    detail = store.con.execute("SELECT DISTINCT detail FROM rejects").fetchall()
    assert detail == [("no raw caption of source lc has this text",)]
    assert table_snapshot(store)["captions"] == before["captions"]


def test_aligned_files_attach_rewrites_to_existing_samples(cc3m_store, aligned):
    store = cc3m_store
    originals, rewrites, chat = aligned
    before = store.count("samples")
    # how many images carry each original: the first chatgpt original was added twice, and
    # two originals are used by two strategies, so they are in the table twice as well
    images = dict(store.con.execute("SELECT text, count(*) FROM captions WHERE variant = 'raw' GROUP BY 1").fetchall())
    per_line = [images[p["source_caption"]] for p in chat]
    assert sorted(per_line) == [1] * 13 + [2] * 3

    r = ingest_laclip(store, rewrites, source="cc3m", originals=originals, style="chatgpt")
    # each line's rewrite goes to every image whose raw caption is that line's original
    assert (r.samples_added, r.captions_added, r.rejected, r.already_present) == (0, 19, 0, 19)
    assert store.count("samples") == before
    got = store.con.execute(
        "SELECT (r.provenance->>'line')::INT, o.text, r.text, r.generator FROM captions r "
        "JOIN captions o ON o.uid = r.uid AND o.variant = 'raw' WHERE r.variant = 'rewrite' ORDER BY 1, o.uid"
    ).fetchall()
    for line, original, rewrite, generator in got:
        assert (original, rewrite, generator) == (chat[line - 1]["source_caption"], chat[line - 1]["rewritten_caption"],
                                                  "LaCLIP chatgpt")
    assert Counter(line for line, *_ in got) == {i + 1: n for i, n in enumerate(per_line)}

    before = table_snapshot(store)
    again = ingest_laclip(store, rewrites, source="cc3m", originals=originals, style="chatgpt")
    assert (again.samples_added, again.captions_added) == (0, 0)
    after = table_snapshot(store)
    assert all(after[t] == before[t] for t in ("samples", "captions", "rejects"))


def test_pairs_match_existing_samples(cc3m_store, laclip_dir):
    r = ingest_laclip(cc3m_store, laclip_dir / "meta_input_output_pairs.jsonl", source="cc3m")
    # each pair's rewrite goes to every sample whose raw caption is its original
    assert (r.samples_added, r.rejected) == (0, 0)
    counts = dict(cc3m_store.con.execute(
        "SELECT text, count(*) FROM captions WHERE source = 'cc3m' AND variant = 'raw' GROUP BY 1").fetchall())
    pairs = [json.loads(x) for x in (laclip_dir / "meta_input_output_pairs.jsonl").read_text("utf-8").splitlines()]
    assert r.captions_added == sum(counts[p["source_caption"]] for p in pairs)


def test_match_variant_selects_the_captions_to_match(cc3m_store, aligned):
    originals, rewrites, _ = aligned
    r = ingest_laclip(cc3m_store, rewrites, source="cc3m", originals=originals, style="chatgpt", match_variant="human")
    assert (r.captions_added, r.reject_reasons) == (0, {"original not in store": 16})


def test_line_count_mismatch_is_an_error_before_any_write(cc3m_store, laclip_dir, aligned):
    store = cc3m_store
    _, rewrites, _ = aligned
    before = table_snapshot(store)
    with pytest.raises(InputError, match=r"cc3m_chatgpt\.txt has 16 lines but source\.txt has 116; .* line-aligned"):
        ingest_laclip(store, rewrites, source="cc3m", originals=laclip_dir / "source.txt", style="chatgpt", create=True)
    assert table_snapshot(store) == before


def test_options_are_checked(store, laclip_dir, aligned):
    originals, rewrites, _ = aligned
    with pytest.raises(ConfigError, match="needs its style"):
        ingest_laclip(store, rewrites, source="lc", originals=originals)
    with pytest.raises(ConfigError, match="pairs JSONL carries its own strategy"):
        ingest_laclip(store, laclip_dir / "meta_input_output_pairs.jsonl", source="lc", style="bard")
    with pytest.raises(InputError, match="originals file .* does not exist"):
        ingest_laclip(store, rewrites, source="lc", originals=originals.with_name("nope.txt"), style="x")


def test_bad_aligned_lines_are_rejected_with_reasons(store, tmp_path):
    originals = tmp_path / "orig.txt"
    rewrites = tmp_path / "rew.txt"
    originals.write_bytes(b"a red car\nan empty rewrite\n\na blue car\na red car\na caf\xe9 sign\na dog\n")
    rewrites.write_bytes(b"A shiny red car.\n\nNo original.\nA blue car.\nA shiny red car.\nA sign.\nA d\xf6g.\n")
    r = ingest_laclip(store, rewrites, source="lc", originals=originals, style="human", create=True)
    assert _reasons(store) == sorted([
        ("line 2", "empty caption"), ("line 3", "empty original"), ("line 5", "duplicate row"),
        ("line 6", "not UTF-8"), ("line 7", "not UTF-8"),
    ])
    detail = store.con.execute("SELECT detail FROM rejects WHERE row_ref LIKE '%line 6'").fetchone()[0]
    assert detail == "orig.txt line 6: invalid byte at position 5"
    assert (r.samples_added, r.by_variant) == (3, {"raw": 3, "rewrite": 2})


def test_bad_pairs_lines_are_rejected_with_reasons(store, tmp_path):
    good = {"strategy": "bard", "source_caption": "a cat", "rewritten_caption": "A cat sits."}
    lines = [
        json.dumps(good),                                             # 1 kept
        json.dumps(good),                                             # 2 duplicate
        json.dumps({**good, "rewritten_caption": 12}),                # 3 number
        json.dumps({**good, "rewritten_caption": ["A", "list"]}),     # 4 list
        json.dumps({**good, "rewritten_caption": None}),              # 5 null
        json.dumps({**good, "rewritten_caption": ""}),                # 6 empty
        json.dumps({"strategy": "bard", "source_caption": "a dog"}),  # 7 no rewrite
        json.dumps({**good, "strategy": None}),                       # 8 null strategy
        json.dumps({**good, "source_caption": "  "}),                 # 9 blank original
        json.dumps({**good, "source_caption": 5}),                    # 10 number original
        json.dumps("just a string"),                                  # 11
        '{"strategy": "bard", ',                                      # 12
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_bytes("\n".join(lines).encode() + b'\n{"strategy": "b\xe4rd"}\n')  # 13
    r = ingest_laclip(store, path, source="lc", create=True)
    assert _reasons(store) == sorted([
        ("line 2", "duplicate row"), ("line 3", "wrong type"), ("line 4", "wrong type"), ("line 5", "null caption"),
        ("line 6", "empty caption"), ("line 7", "missing key"), ("line 8", "missing key"),
        ("line 9", "empty original"), ("line 10", "wrong type"), ("line 11", "not a JSON object"),
        ("line 12", "malformed JSON"), ("line 13", "not UTF-8"),
    ])
    assert (r.samples_added, r.by_variant) == (1, {"raw": 1, "rewrite": 1})
