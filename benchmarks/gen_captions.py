"""Write a synthetic LAION-style caption parquet for the ingest benchmark.

Columns (the laion2B-en metadata layout): ``URL`` VARCHAR, ``TEXT`` VARCHAR, ``WIDTH``
BIGINT, ``HEIGHT`` BIGINT, ``similarity`` DOUBLE. zstd, row groups of about 1M rows.

The data is made entirely in DuckDB SQL from ``hash(hash(seed, row, tag))``, so it is fast
(no Python loop over rows) and deterministic: the same ``--rows`` and ``--seed`` give
the same rows in the same order on every run. What it contains:

* captions that look like alt-text: 5-40 words (skewed short, mean about 17) drawn
  Zipf-like from a vocabulary of about 500 words, in a few shapes (plain phrase,
  stock-photo suffix, ALL-CAPS sale text with a price, hashtags, file-name prefix);
* exact duplicate texts: about 10% of rows reuse the caption of one of 200,000 "pool"
  rows;
* about 0.05% NULL, 0.05% empty and 0.02% whitespace-only captions;
* unique URLs, except planted duplicates (about 1 row in 200,000 repeats the URL of
  the row before it; half of those also repeat its caption, i.e. a duplicate row);
* WIDTH/HEIGHT from common image sizes (0.1% NULL), similarity in [0.28, 0.45).

Usage::

    python benchmarks/gen_captions.py                      # 10M rows -> $TMPDIR/curate_bench/captions_10000000.parquet
    python benchmarks/gen_captions.py --rows 100000 --out /tmp/x.parquet
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import duckdb

VOCAB = """
the a of and with in on for to at by from new photo image picture stock vector illustration background
white black red blue green yellow pink purple orange brown grey gold silver beige navy dark light bright
woman man girl boy child baby family couple people friends team student teacher doctor business person
dog cat puppy kitten horse bird fish flower flowers tree trees forest garden plant leaf leaves rose roses
house home room kitchen bedroom bathroom living interior design modern vintage rustic luxury classic
car truck bike bicycle motorcycle train plane boat ship road street city town village bridge tower
beach sea ocean lake river mountain mountains hill sky sunset sunrise cloud clouds snow rain winter summer
spring autumn fall christmas halloween easter wedding birthday party holiday vacation travel trip tour
dress shirt shoes bag jacket coat jeans skirt hat sunglasses watch ring necklace earrings jewelry fashion
women men kids girls boys size small large medium xl cotton leather silk wool denim lace print pattern
floral striped plaid polka dots abstract geometric art painting drawing watercolor sketch poster canvas
wall decor sticker logo icon sign symbol text font letter alphabet number card cards invitation template
free download best top cheap sale buy online shop store price quality premium original genuine authentic
set pack kit collection series edition version model style type color colors colour shape form
wooden metal glass plastic stone steel iron ceramic paper fabric bamboo marble concrete
table chair sofa bed desk lamp shelf cabinet door window floor carpet rug curtain mirror clock vase
food cake pizza salad soup bread coffee tea wine beer fruit apple banana strawberry chocolate cheese
meat chicken beef pasta rice breakfast lunch dinner recipe dessert cookies healthy fresh delicious
old young happy smiling beautiful cute funny pretty handsome sexy elegant simple easy amazing awesome
big little tall short long wide round square flat open closed empty full hot cold warm cool
view close up top side front back aerial panorama landscape portrait detail macro night day morning evening
american english french italian german japanese chinese indian mexican spanish african european asian
london paris new york tokyo berlin rome sydney california texas florida london chicago toronto
iphone samsung galaxy apple nike adidas disney marvel star wars lego ford toyota bmw mercedes
2018 2019 2020 2021 2022 2023 1 2 3 4 5 10 12 20 24 50 100 2x 3d 4k hd
is are was be has have can will not no yes all one two three four five more most many some other
how what why when where who which this that these those it its your my our their his her
make made making use using used get getting go going look looking show showing find like love
vs or but so if then than into over under between through during after before about around
game games play player team sport football soccer basketball baseball tennis golf running yoga fitness
music guitar piano concert band song dance dancer singer festival movie film actor actress tv show
book books reading school university college class office work job meeting computer laptop phone
water fire earth air light sun moon star stars planet space world map globe country flag
cafe restaurant hotel resort pool spa park museum church temple castle palace market mall
""".split()

# A few non-ASCII tokens as they occur in scraped alt-text.
VOCAB += ["café", "naïve", "résumé", "Zürich", "São", "Paulo", "München", "❤", "★", "→", "–", "&", "|", "-", "..."]

SUFFIXES = [" - Stock Photo", " | Shutterstock", " - Stock Image", " stock photo", " Royalty Free Stock Photo",
            " - Download From Over 100 Million High Quality Stock Photos", " (Image 1 of 5)", " for sale"]


def default_path(rows: int) -> Path:
    return Path(tempfile.gettempdir()) / "curate_bench" / f"captions_{rows}.parquet"


def generate(out: Path, rows: int, seed: int = 0, row_group_size: int = 1_000_000, threads: int | None = None) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".parquet.part")
    con = duckdb.connect(config={"threads": threads} if threads else {})
    v = len(VOCAB)
    # words(s, k): the caption body of "caption key" k. Word j is VOCAB[floor(V * u^2)] with
    # u = hx(s, k, j) scaled to [0, 1) (a Zipf-like skew towards the first words).
    # Length: 5 + the smaller of two uniform draws in [0, 36) -> 5..40 words, skewed short.
    # Macros cannot take prepared parameters, so the word lists are inlined as literals.
    # hx(): DuckDB's hash() of a tuple combines the parts' hashes almost linearly, so the low
    # bits of hash(s, i, 'a') and hash(s, i, 'b') are correlated (a row picked by one
    # "% 200000 = 0" always had the same "% 2" of another). Hashing the result again mixes it.
    con.execute("CREATE MACRO hx(a, b, c) AS hash(hash(a, b, c))")
    con.execute("CREATE MACRO u01(h) AS (h % 1000000007)::DOUBLE / 1000000007")
    vocab_lit = "[" + ", ".join("'" + w.replace("'", "''") + "'" for w in VOCAB) + "]"
    suffix_lit = "[" + ", ".join("'" + s.replace("'", "''") + "'" for s in SUFFIXES) + "]"
    con.execute(
        "CREATE MACRO words(s, k) AS array_to_string(list_transform("
        "  range(5 + least(hx(s, k, 'n1') % 36, hx(s, k, 'n2') % 36)::BIGINT),"
        f"  lambda j: {vocab_lit}[1 + floor({v} * pow(u01(hx(s, k, j)), 2))::BIGINT]), ' ')"
    )
    # shape(s, k, body): the alt-text shapes.
    con.execute(
        "CREATE MACRO shaped(s, k, body) AS CASE hx(s, k, 'shape') % 20 "
        "  WHEN 0 THEN upper(body) || ' $' || (hx(s, k, 'p') % 200)::VARCHAR || '.99' "
        f"  WHEN 1 THEN body || {suffix_lit}[1 + (hx(s, k, 'sfx') % {len(SUFFIXES)})::BIGINT] "
        f"  WHEN 2 THEN body || {suffix_lit}[1 + (hx(s, k, 'sfx') % {len(SUFFIXES)})::BIGINT] "
        "  WHEN 3 THEN body || ' #' || split_part(body, ' ', 1) || ' #' || split_part(body, ' ', 2) "
        "  WHEN 4 THEN 'IMG_' || lpad((hx(s, k, 'img') % 10000)::VARCHAR, 4, '0') || '.JPG ' || body "
        "  ELSE upper(left(body, 1)) || substr(body, 2) END"
    )
    con.execute(
        "CREATE MACRO url_of(s, i) AS 'https://' || "
        "  ['cdn', 'img', 'images', 'media', 'static', 'i', 'assets', 'photos'][1 + (hx(s, i, 'sub') % 8)::BIGINT] || "
        "  (hx(s, i, 'host') % 5000)::VARCHAR || '.example-' || "
        "  ['shop', 'blog', 'news', 'stock', 'cdn', 'media'][1 + (hx(s, i, 'dom') % 6)::BIGINT] || '.com/' || "
        "  ['wp-content/uploads/2019', 'images/products', 'photos', 'media/catalog/product', 'uploads', 'thumbs/large']"
        "    [1 + (hx(s, i, 'dir') % 6)::BIGINT] || '/' || to_hex(hx(s, i, 'file')) || '_' || i::VARCHAR || "
        "  ['.jpg', '.jpg', '.jpg', '.png', '.jpeg', '.webp'][1 + (hx(s, i, 'ext') % 6)::BIGINT]"
    )
    sql = f"""
        WITH base AS (
            SELECT range AS i,
                   hx({seed}, range, 'dupurl') % 200000 = 0 AND range > 0 AS dup_url,
                   hx({seed}, range, 'duprow') % 2 = 0 AS dup_row,
                   hx({seed}, range, 'pool') % 10 = 0 AS from_pool,
                   hx({seed}, range, 'null') % 10000 AS nul
            FROM range({rows})
        ), keyed AS (
            SELECT i, nul,
                   CASE WHEN dup_url THEN i - 1 ELSE i END AS url_key,
                   CASE WHEN dup_url AND dup_row THEN i - 1 ELSE i END AS text_row,
                   dup_url
            FROM base
        ), k2 AS (
            SELECT *, CASE WHEN hx({seed}, text_row, 'pool') % 10 = 0
                           THEN 1000000000000 + hx({seed}, text_row, 'poolk') % 200000
                           ELSE text_row END AS cap_key
            FROM keyed
        )
        SELECT url_of({seed}, url_key) AS URL,
               CASE WHEN nul < 5 AND NOT dup_url THEN NULL
                    WHEN nul < 10 AND NOT dup_url THEN ''
                    WHEN nul < 12 AND NOT dup_url THEN '   '
                    ELSE shaped({seed}, cap_key, words({seed}, cap_key)) END AS TEXT,
               CASE WHEN hx({seed}, i, 'wnull') % 1000 = 0 THEN NULL
                    ELSE [256, 300, 400, 500, 600, 640, 800, 1000, 1024, 1200, 1280, 1600, 1920][1 + (hx({seed}, i, 'w') % 13)::BIGINT] END::BIGINT AS WIDTH,
               CASE WHEN hx({seed}, i, 'wnull') % 1000 = 0 THEN NULL
                    ELSE [200, 256, 300, 375, 400, 480, 500, 600, 683, 720, 768, 800, 1080][1 + (hx({seed}, i, 'h') % 13)::BIGINT] END::BIGINT AS HEIGHT,
               round(0.28 + 0.17 * u01(hx({seed}, i, 'sim')), 6) AS similarity
        FROM k2
        ORDER BY i
    """
    t = time.perf_counter()
    con.execute(
        f"COPY ({sql}) TO '{tmp}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {row_group_size})"
    )
    secs = time.perf_counter() - t
    os.replace(tmp, out)
    stats = con.execute(
        f"""SELECT count(*), count(*) FILTER (TEXT IS NULL), count(*) FILTER (TEXT = ''),
                   count(*) FILTER (trim(TEXT) = '' AND TEXT <> ''),
                   count(*) - count(DISTINCT URL), count(DISTINCT TEXT),
                   avg(length(TEXT)), avg(length(TEXT) - length(replace(TEXT, ' ', '')) + 1)
            FROM read_parquet('{out}')"""
    ).fetchone()
    groups = con.execute(
        f"SELECT count(DISTINCT row_group_id) FROM parquet_metadata('{out}')"
    ).fetchone()[0]
    con.close()
    return {
        "path": str(out), "rows": stats[0], "seed": seed, "secs": round(secs, 1),
        "size_MB": round(out.stat().st_size / 2**20, 1), "row_groups": groups,
        "null_text": stats[1], "empty_text": stats[2], "blank_text": stats[3], "duplicate_urls": stats[4],
        "distinct_texts": stats[5], "avg_chars": round(stats[6], 1), "avg_words": round(stats[7], 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--out", type=Path, default=None, help="default: $TMPDIR/curate_bench/captions_<rows>.parquet")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--row-group-size", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    out = a.out or default_path(a.rows)
    print(json.dumps(generate(out, a.rows, a.seed, a.row_group_size, a.threads)), flush=True)


if __name__ == "__main__":
    main()
