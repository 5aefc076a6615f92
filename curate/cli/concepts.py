"""``curate concepts``: vocabularies, the published count tables of Udandarao et al. 2024,
and audits over count vectors, a thin layer over :mod:`curate.concepts`.

Every audit command gets its count vectors from :func:`curate.concepts.audit.counts_source`
through :func:`count_specs`, so a new count source (the store's own caption hits) is one
option there and one branch in ``counts_source``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .. import names
from ..errors import ConfigError
from ..store import Store
from .common import executor_options, max_rows_option, progress_option, run_options, show_table, store_option

if TYPE_CHECKING:
    from ..concepts.audit import CountSpec
    from ..concepts.measures import ImageOptions

method_option = click.option("--method", default="lemmatized", show_default=True,
                             help="Published count method: lemmatized, lowercased, rampp0.7, "
                                  "integrated_tlemmatized_i0.7, ...")
downstream_option = click.option("--downstream", default="classification", show_default=True,
                                 help="Published downstream set(s): a name, a comma list, 'classification' "
                                      "(the 17 zero-shot sets) or 'all'.")
vocabulary_option = click.option("--vocabulary", default=None,
                                 help="Restrict to a vocabulary (stored or bundled), under its spelling.")
out_dir_option = click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                              help="Folder for plots (default: the store's reports/).")


def _show(df: Any, max_rows: int = 40, float_precision: int | None = 4) -> None:
    show_table(df, max_rows, float_precision=float_precision)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "_", text.lower()).strip("_")


def report_path(out_dir: Path | None, store_path: Path, stem: str) -> Path:
    """A plot's path stem: a report name made from ``stem`` (slugged, at most 150
    characters, checked by :func:`curate.names.check_name`) under ``--out-dir`` or the
    store's ``reports/`` (and kept there by :func:`curate.names.under`)."""
    name = names.check_name("report", names.normalise(_slug(stem))[:150], max_len=150)
    root = out_dir or store_path / "reports"
    names.under(root, name)  # refuses a name that would leave the folder
    return root / name


def count_specs(published: tuple[str, ...], method: str, downstream: str, vocabulary: str | None,
                counts: tuple[str, ...] = (), mode: str = "phrase", measure: str = "text",
                image: ImageOptions | None = None) -> list[CountSpec]:
    """CountSpecs from the audit options (``--published NAME[:METHOD]`` and
    ``--counts VOCABULARY[:VARIANT[:SOURCE]]`` for the store's own counts, repeatable;
    ``--measure`` text, image or matched for the latter)."""
    from ..concepts.audit import parse_spec

    specs = [parse_spec(f"published:{p}", method=method, downstream=downstream, vocabulary=vocabulary)
             for p in published]
    specs += [parse_spec(f"store:{c}", mode=mode, measure=measure, image=image) for c in counts]
    if not specs:
        raise ConfigError("name a count source: --published PRETRAIN (e.g. --published cc3m) or --counts VOCABULARY "
                          "(the store's own, from `curate concepts count`)")
    return specs


counts_option = click.option("--counts", multiple=True, metavar="VOCABULARY[:VARIANT[:SOURCE]]",
                             help="The store's own text counts of a vocabulary (from `curate concepts count`), "
                                  "optionally of one caption variant and source; repeatable.")
mode_option = click.option("--mode", type=click.Choice(["phrase", "paper", "nouns"]), default="phrase",
                           show_default=True, help="Matching mode of the store's text counts: phrase, paper "
                                                   "(Udandarao et al.'s text search) or nouns (a strict AND of nouns).")


def measure_options(f: Any) -> Any:
    """``--measure`` and the image options: which count of the store (text, image, matched)."""
    opts = [
        click.option("--measure", type=click.Choice(["text", "image", "matched"]), default="text", show_default=True,
                     help="The store's count: captions naming the concept (text), images tagged with it (image), or "
                          "both in one sample (matched; image tags from `curate concepts image-count`)."),
        click.option("--image-set", default=None, help="Image set of the tags (default: the only one tagged "
                                                       "with the vocabulary's concepts)."),
        click.option("--concept-set", default=None, help="Concept set of the tags (default: the only "
                                                         "concepts.VOCABULARY.* one tagged)."),
        click.option("-k", "k", default=5, show_default=True, help="An image has its top-k tags."),
        click.option("--min-score", default=0.0, show_default=True, help="Lowest cosine score a tag counts with."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def image_options(image_set: str | None, concept_set: str | None, k: int, min_score: float) -> ImageOptions:
    from ..concepts.measures import ImageOptions

    return ImageOptions(image_set, concept_set, k, min_score)


@click.group()
def concepts() -> None:
    """Concept vocabularies, published concept counts (Udandarao et al. 2024) and long-tail audits."""


# -- vocabularies --------------------------------------------------------------------
@concepts.group()
def vocab() -> None:
    """Bundled and user concept vocabularies in the concepts table."""


@vocab.command("add")
@click.argument("name")
@click.argument("source")
@store_option
@click.option("--replace", is_flag=True, help="Replace a stored vocabulary of this name with different content.")
def vocab_add(name: str, source: str, store_path: Path, replace: bool) -> None:
    """Store vocabulary NAME from SOURCE: a bundled name or a TXT/CSV/TSV/JSON file."""
    from ..concepts.vocab import add_vocabulary, check_name, read_source

    check_name(name)
    read_source(source)  # every input error before the store is opened (or created)
    with Store.open(store_path, create=True) as s:
        click.echo(add_vocabulary(s, name, source, replace=replace).summary())


@vocab.command("list")
@store_option
def vocab_list(store_path: Path) -> None:
    """Stored vocabularies (concepts.vocabularies) and the bundled ones."""
    from ..concepts.vocab import bundled_vocabularies, read_bundled

    if (store_path / "catalog.duckdb").exists():
        with Store.open(store_path, read_only=True) as s:
            if s.has_table("concepts"):
                click.echo(f"stored in {store_path} (curate sql -q concepts.vocabularies)")
                _show(s.query("concepts.vocabularies").pl())
            else:
                click.echo(f"no vocabularies stored in {store_path}")
    click.echo("bundled (curate concepts vocab add NAME NAME):")
    for name, desc in bundled_vocabularies().items():
        click.echo(f"  {name:<32} {len(read_bundled(name).concepts):>5,}  {desc}")


@vocab.command("show")
@click.argument("name")
@store_option
@max_rows_option()
def vocab_show(name: str, store_path: Path, max_rows: int) -> None:
    """The concepts and aliases of a stored (else bundled) vocabulary."""
    import polars as pl

    from ..concepts.vocab import vocabulary_entries

    store = Store.open(store_path, read_only=True) if (store_path / "catalog.duckdb").exists() else None
    try:
        entries = vocabulary_entries(store, name)
    finally:
        if store is not None:
            store.close()
    df = pl.DataFrame({"concept": [c for c, _ in entries], "aliases": [", ".join(a[1:]) for _, a in entries]})
    click.echo(f"{name}: {df.height:,} concepts, {sum(len(a) - 1 for _, a in entries):,} extra aliases")
    _show(df, max_rows)


# -- published counts ----------------------------------------------------------------
@concepts.command("count")
@store_option
@click.option("--vocabulary", required=True, help="A stored or bundled vocabulary (`curate concepts vocab list`).")
@mode_option
@click.option("--model", default=None, help="spaCy pipeline whose lemma tables are used (default en_core_web_sm).")
@click.option("--workers", default=1, show_default=True, help="Worker processes (phrase mode is fast in one; "
              "paper mode runs a tagger and gains from 2).")
@click.option("--batch-size", default=10_000, show_default=True, help="Captions per batch (one commit each).")
@click.option("--limit", type=int, default=None, help="Count at most this many pending captions, then stop.")
@click.option("--aliases", default=None, metavar="wordnet|wordnet:DIR|FILE.tsv",
              help="Synonyms applied at this count: WordNet's first-sense lemmas, or a TSV of concept<TAB>alias; "
                   "the counts are reported per alias.")
@progress_option()
@max_rows_option(15, "Rows of the summary shown.")
@executor_options
def count_cmd(store_path: Path, vocabulary: str, mode: str, model: str | None, workers: int, batch_size: int,
              limit: int | None, aliases: str | None, progress: bool | None, max_rows: int, executor: str,
              ray_address: str | None, gpus_per_worker: float) -> None:
    """Count a vocabulary's concepts in every caption not counted yet (concepts.text_match.v1),
    then print the long-tail summary per source and variant."""
    import polars as pl

    from ..registry import build_stage
    from ..runner import run_stage

    cfg: dict[str, Any] = {"vocabulary": vocabulary, "mode": mode}
    if model:
        cfg["model"] = model
    if aliases:
        cfg["aliases"] = aliases
    stage = build_stage("concepts.text_match.v1", cfg)
    with Store.open(store_path) as s:
        if aliases:
            from ..concepts.aliases import load_aliases
            from ..concepts.vocab import vocabulary_entries

            for line in load_aliases(aliases, vocabulary_entries(s, vocabulary)).notes():
                click.echo(line)
        res = run_stage(s, stage, run_options(executor, ray_address, gpus_per_worker, batch_size=batch_size,
                                              workers=workers, limit=limit, progress=progress))
        click.echo(res.summary())
        _show(s.query("concepts.text_summary", vocabulary=vocabulary, mode=mode).pl(), max_rows)
        top = s.query("concepts.text_counts_total", vocabulary=vocabulary, mode=mode).pl()
        per_alias = s.query("concepts.alias_counts", vocabulary=vocabulary, mode=mode).pl() if aliases else None
    click.echo("most frequent: " + ", ".join(f"{c} {n:,}" for c, n in top.head(8).iter_rows()))
    if per_alias is not None:
        extra = per_alias.filter(~pl.col("is_name"))
        click.echo(f"per alias ({extra.height:,} aliases matched; curate sql -q concepts.alias_counts -p "
                   f"vocabulary={vocabulary}" + (f" -p mode={mode}" if mode != "phrase" else "") + "):")
        _show(extra.sort(["only_this_alias", "samples"], descending=True).drop("is_name"), max_rows)
    click.echo(f"counts: curate sql -q concepts.text_counts -p vocabulary={vocabulary}"
               + (f" -p mode={mode}" if mode != "phrase" else ""))


@concepts.command("tail")
@store_option
@click.option("--vocabulary", required=True, help="A vocabulary counted with `curate concepts count`.")
@click.option("-n", "n", default=50, show_default=True, help="Number of rarest concepts.")
@click.option("--min-count", default=1, show_default=True, help="Leave out concepts with fewer samples.")
@click.option("--cap", default=50, show_default=True, help="At most this many samples per concept.")
@click.option("--variant", default=None, help="Count and take captions of this variant only.")
@mode_option
@click.option("--seed", default=0, show_default=True)
@click.option("--name", default=None,
              help="File stem under the store's manifests/ (default tail_VOCABULARY_MODE_VARIANT_nN).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Manifest path, a .parquet (default: the store's manifests/).")
@click.option("--train-manifest", type=click.Path(path_type=Path), default=None,
              help="A training manifest in any format `curate mix` writes (parquet, JSONL, CSV/TSV, DataComp .npy) "
                   "or webdataset .tar shards: report the overlap.")
@measure_options
def tail_cmd(store_path: Path, vocabulary: str, n: int, min_count: int, cap: int, variant: str | None, mode: str,
             seed: int, name: str | None, out: Path | None, train_manifest: Path | None, measure: str,
             image_set: str | None, concept_set: str | None, k: int, min_score: float) -> None:
    """A Let It Wag!-style evaluation manifest of a vocabulary's rarest concepts."""
    from ..concepts.tail import build_tail_benchmark, overlap, read_training_manifest, tail_path

    # names, then the training manifest, are checked before anything is written
    tail_path(store_path, vocabulary, n=n, variant=variant, mode=mode, name=name, out=out, measure=measure)
    train = read_training_manifest(train_manifest) if train_manifest else None
    with Store.open(store_path) as s:
        res = build_tail_benchmark(s, vocabulary, n=n, min_count=min_count, cap=cap, variant=variant, mode=mode,
                                   seed=seed, out=out, name=name, measure=measure,
                                   image=image_options(image_set, concept_set, k, min_score))
    click.echo(res.summary())
    _show(res.concepts, 20)
    if train is not None:
        ov = overlap(res.path, train)
        click.echo(f"overlap with {train_manifest}: {int(ov['in_train'].sum()):,} of {int(ov['samples'].sum()):,} "
                   f"tail samples are in the training manifest (matched by {train.key}, {train.rows:,} manifest rows)")
        _show(ov.filter(ov["in_train"] > 0), 20)


@concepts.command("image-count")
@store_option
@click.option("--vocabulary", required=True, help="A stored or bundled vocabulary.")
@click.option("--image-set", required=True, help="An image vector set (e.g. clip.<model>.image from `curate embed`).")
@click.option("--model", required=True, help="open_clip model name of the image set's model.")
@click.option("--pretrained", required=True, help="Its pretrained tag or local checkpoint path.")
@click.option("--model-config", default=None, help="A JSON model config to register first (custom models).")
@click.option("--model-id", default=None, help="Model id for the concept set's name (default MODEL/PRETRAINED).")
@click.option("--templates", "template_set", default="imagenet1k", show_default=True,
              help="Prompt templates: a dataset of clip_benchmark's templates.json, or 'simple'.")
@click.option("-k", "k", default=5, show_default=True, help="Tags per image.")
@click.option("--min-score", default=0.0, show_default=True, help="Lowest cosine score a tag counts with.")
@click.option("--variant", default=None, help="Text and matched counts from captions of this variant only.")
@mode_option
@click.option("--device", default="auto", show_default=True)
@max_rows_option(20)
def image_count_cmd(store_path: Path, vocabulary: str, image_set: str, model: str, pretrained: str,
                    model_config: str | None, model_id: str | None, template_set: str, k: int, min_score: float,
                    variant: str | None, mode: str, device: str, max_rows: int) -> None:
    """Image and matched concept frequency: embed the vocabulary's prompts with the CLIP
    text tower, tag every image with its top-k concepts, count, and report the
    misalignment degree."""
    from ..concepts.image import concept_set_name, embed_concepts, image_counts
    from ..concepts.vocab import check_name as check_vocabulary
    from ..similarity.tags import tag
    from ..stages.clip import ClipModel, check_weights, default_model_id
    from ..vectors import check_name

    check_vocabulary(vocabulary)  # names that become paths, before the model is loaded
    check_name(image_set)
    mid = model_id or default_model_id(model, pretrained)
    check_name(concept_set_name(vocabulary, mid))
    check_weights(model, pretrained, model_config)
    clip = ClipModel(model, pretrained, model_config, device=device, precision="auto")
    with Store.open(store_path) as s:
        cset = embed_concepts(s, vocabulary, clip, model_id=mid, template_set=template_set)
        res = tag(s, image_set, cset, k=k)
        click.echo(res.summary())
        counts = image_counts(s, vocabulary, cset, image_set, k=k, min_score=min_score, variant=variant, mode=mode)
    click.echo(counts.summary())
    _show(counts.counts, max_rows)
    click.echo(f"tables: curate sql -q concepts.image_counts -p vocabulary={vocabulary} -p iset={image_set} "
               f"-p cset={cset} -p k={k}" + (f" -p min_score={min_score:g}" if min_score else "")
               + "; concepts.misalignment takes the same parameters")


@concepts.command("import-published")
@click.argument("path", type=click.Path(path_type=Path))
@store_option
def import_published_cmd(path: Path, store_path: Path) -> None:
    """Import the paper's count tables: the nozeroshot-frequencies folder, its search_counts/
    folder, or derived_counts_long.parquet. Replaces earlier imported rows."""
    from ..concepts.published import import_published, locate

    locate(path)
    with Store.open(store_path, create=True) as s:
        click.echo(import_published(s, path).summary())
        click.echo("Zero-count share and median per pretraining set, lemmatized text counts, "
                   "17 classification sets (curate sql -q concepts.published_summary)")
        _show(s.query("concepts.published_summary").pl().filter(method="lemmatized"), float_precision=None)


# -- audits --------------------------------------------------------------------------
@concepts.command()
@store_option
@click.option("--published", multiple=True, metavar="PRETRAIN[:METHOD]",
              help="Published counts of a pretraining set (cc3m, cc12m, yfcc15m, laion400m, synthci30m); repeatable.")
@method_option
@counts_option
@mode_option
@downstream_option
@vocabulary_option
@out_dir_option
@click.option("--plot/--no-plot", default=True, show_default=True, help="Write the rank-frequency plot.")
@measure_options
def audit(store_path: Path, published: tuple[str, ...], counts: tuple[str, ...], mode: str, method: str,
          downstream: str, vocabulary: str | None, out_dir: Path | None, plot: bool, measure: str,
          image_set: str | None, concept_set: str | None, k: int, min_score: float) -> None:
    """Summary (zero-count share, median, quantiles) and a log-log rank-frequency plot."""
    import polars as pl

    from ..concepts.audit import counts_source, rank_frequency_plot, summarize
    from ..concepts.vocab import vocabulary_entries

    specs = count_specs(published, method, downstream, vocabulary, counts, mode, measure,
                        image_options(image_set, concept_set, k, min_score))
    with Store.open(store_path, read_only=True) as s:
        vectors = {spec.label: counts_source(s, spec) for spec in specs}
        size = len(vocabulary_entries(s, vocabulary)) if vocabulary else None
    rows = [summarize(df).with_columns(pl.lit(label).alias("counts")) for label, df in vectors.items()]
    table = pl.concat(rows).select("counts", pl.exclude("counts"))
    table = table.with_columns((pl.col("zero_share") * 100).round(1).alias("zero_pct"))
    _show(table.select("counts", "concepts", "zero_count", "zero_pct", "median", "mean", "total",
                       pl.col("^p\\d+$"), "max"), float_precision=1)
    if size is not None:
        for label, df in vectors.items():
            if df.height < size:
                click.echo(f"{label}: {size - df.height:,} of {size:,} {vocabulary} concepts have no published count "
                           "(left out)")
    if plot:
        if all(spec.kind == "published" for spec in specs):
            stem = "_".join(spec.name for spec in specs) + "_" + "_".join(sorted({spec.method for spec in specs}))
            stem += f"_{vocabulary or downstream}"
        else:
            stem = "_".join(spec.label for spec in specs)
        out = report_path(out_dir, store_path, f"concepts_rank_frequency_{stem}")
        paths = rank_frequency_plot(vectors, out, title=f"rank-frequency: {', '.join(vectors)}")
        click.echo(f"plot: {', '.join(str(p) for p in paths)}")


@concepts.command()
@click.argument("source_a", metavar="A")
@click.argument("source_b", metavar="B")
@store_option
@method_option
@downstream_option
@vocabulary_option
@mode_option
@measure_options
@click.option("--top", default=10, show_default=True, help="Gainers and losers shown.")
def compare(source_a: str, source_b: str, store_path: Path, method: str, downstream: str, vocabulary: str | None,
            mode: str, measure: str, image_set: str | None, concept_set: str | None, k: int, min_score: float,
            top: int) -> None:
    """Compare two count vectors (A, B: published:PRETRAIN[:METHOD], store:VOCABULARY[:VARIANT[:SOURCE]][@STORE],
    image:VOCABULARY, matched:VOCABULARY[:VARIANT[:SOURCE]] or manifest:VOCABULARY:PATH): Spearman, gainers, losers."""
    from ..concepts.audit import compare as do_compare
    from ..concepts.audit import counts_source, parse_spec

    img = image_options(image_set, concept_set, k, min_score)
    a, b = (parse_spec(x, method=method, downstream=downstream, vocabulary=vocabulary, mode=mode, measure=measure,
                       image=img) for x in (source_a, source_b))
    with Store.open(store_path, read_only=True) as s:
        res = do_compare(counts_source(s, a), counts_source(s, b), label_a=a.label, label_b=b.label, top=top)
    click.echo(res.summary())
    cols = ["concept", "count_a", "count_b", "pct_a", "pct_b", "shift"]
    click.echo(f"gain most in {b.label} (percentile rank shift)")
    _show(res.gainers().select(cols), top, 3)
    click.echo(f"lose most in {b.label}")
    _show(res.losers().select(cols), top, 3)


@concepts.command()
@click.argument("metric_csv", type=click.Path(path_type=Path))
@store_option
@click.option("--published", default=None, metavar="PRETRAIN[:METHOD]", help="Counts of this pretraining set.")
@counts_option
@mode_option
@method_option
@downstream_option
@vocabulary_option
@click.option("--column", default=None, help="Metric column (default: the CSV's only numeric column).")
@click.option("--drop-zero", is_flag=True, help="Fit log10(count) over count > 0 instead of log10(count + 1).")
@out_dir_option
@measure_options
def fit(metric_csv: Path, store_path: Path, published: str | None, counts: tuple[str, ...], mode: str, method: str,
        downstream: str, vocabulary: str | None, column: str | None, drop_zero: bool, out_dir: Path | None,
        measure: str, image_set: str | None, concept_set: str | None, k: int, min_score: float) -> None:
    """Log-linear fit of a per-concept metric (CSV: concept, metric) against log10 count; plot."""
    from ..concepts.audit import counts_source, fit_plot, loglinear_fit, read_metric_csv

    metric = read_metric_csv(metric_csv, column)
    specs = count_specs((published,) if published else (), method, downstream, vocabulary, counts, mode, measure,
                        image_options(image_set, concept_set, k, min_score))
    if len(specs) != 1:
        raise ConfigError("fit takes one count source: --published PRETRAIN or --counts VOCABULARY")
    (spec,) = specs
    with Store.open(store_path, read_only=True) as s:
        count_table = counts_source(s, spec)
    res = loglinear_fit(count_table, metric, drop_zero=drop_zero)
    click.echo(f"{metric_csv.name} against {spec.label}: {res.summary()}")
    out = report_path(out_dir, store_path, f"concepts_fit_{_slug(metric_csv.stem)}_{_slug(spec.label)}")
    paths = fit_plot(res, out, title=f"{metric_csv.stem} against {spec.label}", metric_name=column or "metric")
    click.echo(f"plot: {', '.join(str(p) for p in paths)}")


@concepts.command()
@store_option
@click.option("--vocabulary", required=True, help="A vocabulary counted with `curate concepts count`.")
@mode_option
@click.option("--measure", type=click.Choice(["text", "matched"]), default="text", show_default=True,
              help="Pairs named in one caption (text), or matched in one sample: image tag and caption (matched).")
@click.option("--variant", default=None, help="Captions of this variant only.")
@click.option("--image-set", default=None, help="Image set of the tags (matched; default: the only one).")
@click.option("--concept-set", default=None, help="Concept set of the tags (matched; default: the only one).")
@click.option("-k", "k", default=5, show_default=True, help="An image has its top-k tags (matched).")
@click.option("--min-score", default=0.0, show_default=True, help="Lowest tag score (matched).")
@click.option("--top", default=25, show_default=True, help="Concepts in the plot (the most frequent).")
@out_dir_option
@click.option("--plot/--no-plot", default=True, show_default=True, help="Write the co-occurrence heat map.")
@max_rows_option(20, "Pairs shown.")
def cooccur(store_path: Path, vocabulary: str, mode: str, measure: str, variant: str | None, image_set: str | None,
            concept_set: str | None, k: int, min_score: float, top: int, out_dir: Path | None, plot: bool,
            max_rows: int) -> None:
    """Concept pairs found together (concepts.cooccurrence, concepts.cooccurrence_matched) and a heat map."""
    from ..concepts.cooccur import cooccurrence, cooccurrence_plot
    from ..concepts.vocab import check_name as check_vocabulary

    check_vocabulary(vocabulary)
    if variant is not None:
        names.check_name("variant", variant)
    with Store.open(store_path, read_only=True) as s:
        pairs = cooccurrence(s, vocabulary, measure=measure, mode=mode, variant=variant,
                             image=image_options(image_set, concept_set, k, min_score))
    unit = "captions" if measure == "text" else "samples"
    click.echo(f"{pairs.height:,} concept pairs of {vocabulary} found together ({measure}; count = {unit} with both; "
               f"curate sql -q concepts.{'cooccurrence' if measure == 'text' else 'cooccurrence_matched'})")
    _show(pairs, max_rows, 3)
    if plot and pairs.height:
        stem = f"concepts_cooccurrence_{vocabulary}_{mode}_{measure}" + (f"_{variant}" if variant else "")
        paths = cooccurrence_plot(pairs, report_path(out_dir, store_path, stem), top=top,
                                  title=f"{vocabulary} ({mode}, {measure}): {unit} with both concepts")
        click.echo(f"plot: {', '.join(str(p) for p in paths)}")


@concepts.command("aliases")
@click.argument("source", metavar="wordnet|wordnet:DIR|FILE.tsv")
@click.option("--vocabulary", required=True, help="A stored or bundled vocabulary.")
@store_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the applied pairs as a TSV (concept<TAB>alias), to edit and pass to `count --aliases`.")
@max_rows_option(20, "Pairs shown.")
def aliases_cmd(source: str, vocabulary: str, store_path: Path, out: Path | None, max_rows: int) -> None:
    """The aliases SOURCE would add to VOCABULARY at `curate concepts count --aliases SOURCE`."""
    import polars as pl

    from ..concepts.aliases import load_aliases
    from ..concepts.vocab import vocabulary_entries

    store = Store.open(store_path, read_only=True) if (store_path / "catalog.duckdb").exists() else None
    try:
        entries = vocabulary_entries(store, vocabulary)
    finally:
        if store is not None:
            store.close()
    aset = load_aliases(source, entries)
    for line in aset.notes():
        click.echo(line)
    df = pl.DataFrame(aset.rows, schema={"concept": pl.String, "alias": pl.String}, orient="row")
    _show(df, max_rows)
    if out is not None:
        if out.suffix.lower() != ".tsv":
            raise ConfigError(f"{out.name}: the alias file is a .tsv (concept<TAB>alias)")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("concept\talias\n" + "".join(f"{c}\t{a}\n" for c, a in aset.rows), encoding="utf-8")
        click.echo(f"wrote {len(aset.rows):,} pairs to {out}")
