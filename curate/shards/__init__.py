"""Webdataset shards from a training manifest (``curate shards``): the run
(:mod:`curate.shards.core`), manifest reading, the plan, shard writing, and the caption
layout that makes open_clip draw each sample's captions with the policy's probabilities
(:mod:`curate.shards.captions`)."""

from .core import ShardOptions, ShardResult, shard_options, write_shards

__all__ = ["ShardOptions", "ShardResult", "shard_options", "write_shards"]
