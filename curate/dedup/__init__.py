"""Dedup: whole-corpus passes that group duplicates into ``dedup_groups``.

``curate.dedup.text`` handles caption text (exact on normalised text, then MinHash
near duplicates); image dedup will write the same table shape with its own ``kind``.
Importing this package imports nothing heavy; datasketch is needed only when a pass
runs (``pip install 'curate[dedup]'``).
"""

from .text import DedupConfig, DedupResult, dedup_captions, find_duplicates

__all__ = ["DedupConfig", "DedupResult", "dedup_captions", "find_duplicates"]
