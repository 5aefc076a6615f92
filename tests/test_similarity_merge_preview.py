"""The caption-merge preview (``similarity.merged_captions``) counts what the merge adds
(issue 16 item 11): before, its ``new_for_kept`` counted every caption of a dropped
duplicate the kept sample lacked in that variant, so a text two duplicates share was
promised twice, and a rerun after a merge promised everything again; the merge added
each text once, and nothing on the rerun."""

from __future__ import annotations

from curate.similarity import exact_duplicates, merge_captions

from .test_vectors import add_samples, make_uids


def new_for_kept(store, **params) -> int:
    return sum(r[5] for r in store.query("similarity.merged_captions", kind="image_exact", **params).fetchall())


def test_the_merge_preview_promises_what_the_merge_adds(store):
    uids = make_uids(8, seed=3)
    # one image downloaded four times (0 is kept: it came first), one twice, two singletons
    sha = ["aaa", "aaa", "aaa", "aaa", "bbb", "bbb", None, None]
    with store as s:
        add_samples(s, uids, runs=[1, 2, 2, 2, 1, 2, 1, 1], sha=sha)
        for i, text in [(1, "a red car on a road"), (2, "a red car on a road"), (3, "a red car on a road"),
                        (2, "the kept sample says this too"), (0, "the kept sample says this too")]:
            s.execute("INSERT INTO captions (caption_id, uid, variant, text, source, run_id) "
                      "SELECT md5_number(?::VARCHAR || chr(31) || 'raw' || chr(31) || ?)::UUID, ?::UUID, 'raw', ?, "
                      "'synthetic', 1", [uids[i], text, uids[i], text])
        exact_duplicates(s, min_urls=20)
        # dropped: 1, 2, 3 (own captions, the shared text three times, one text 0 has) and 5
        promised = new_for_kept(s)
        added = merge_captions(s, "image_exact")["added"]
        assert promised == added == 3 + 1 + 1  # own captions of 1, 2, 3 and 5; the shared text once
        assert new_for_kept(s) == 0 == merge_captions(s, "image_exact")["added"]  # a rerun adds nothing
        assert new_for_kept(s, suffix="_other") == added  # another suffix would add them again
