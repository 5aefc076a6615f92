"""Concept frequency (Udandarao et al., "No 'Zero-Shot' Without Exponential Data", arXiv
2404.04125): concept vocabularies and the ``concepts`` table, the paper's published count
tables, and audits over per-concept count vectors. Importing this package does nothing."""
