"""The FAISS similarity layer over embedding sets (:mod:`curate.vectors`): indexes,
k-NN and range search, semantic dedup, near and exact duplicate images, placeholder
images, the target-distribution filter and zero-shot tagging. See ``docs/similarity.md``.

Importing this package imports nothing heavy; FAISS is imported when an index is built
(``pip install 'curate[index]'``).
"""

from .index import Index, build_index, create_index, exact_scores, load_index, resolve_device, save_index
from .near import exact_duplicates, merge_captions, merged_captions, near_duplicates
from .semdedup import kmeans, semdedup
from .tags import tag
from .target import target_filter

__all__ = ["Index", "build_index", "create_index", "exact_scores", "load_index", "resolve_device", "save_index",
           "exact_duplicates", "merge_captions", "merged_captions", "near_duplicates", "kmeans", "semdedup", "tag", "target_filter"]
