"""Stable identifiers.

``uid`` (a sample) and ``caption_id`` (a caption variant) are 128-bit values stored as
DuckDB ``UUID``. They are computed in SQL by :data:`UID_SQL` / :data:`CAPTION_ID_SQL`
and, for tests and Python-side readers, by the twins below; the two must agree.

* A source's own id wins. An id written as a uid is the uid itself, in any of the
  textual forms a uid is printed in (:data:`UID_TEXT`, any case): 32 hex digits
  (DataComp's ``uid``, what ``curate mix`` writes), the dashed UUID the store prints,
  either of those in ``{...}`` braces, or after ``urn:uuid:``. So re-ingesting the
  store's own uids gives the same samples, whichever form they were exported in. Any
  other id string is hashed with the source name.
* Otherwise ``uid = md5_number(source || 0x1F || url)``, or of the record's canonical
  text when there is no url. ``md5_number`` is DuckDB's: the MD5 digest read as a
  little-endian 128-bit integer.
* ``caption_id = md5_number(uid || 0x1F || variant || 0x1F || text)``: captions are
  content-addressed, so ingesting the same caption again adds nothing.
"""

from __future__ import annotations

import hashlib
import re
import uuid

SEP = "\x1f"
_CORE = r"(?:[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
#: The textual forms of a uid, matched against the *lower-cased* id (Python ``re`` and
#: DuckDB's RE2 read it alike): 32 hex digits or the dashed 8-4-4-4-12 form, bare, in
#: braces, or after ``urn:uuid:``. Nothing else (no other dash positions, no spaces).
UID_TEXT = rf"{_CORE}|\{{{_CORE}\}}|urn:uuid:{_CORE}"
_UID_TEXT = re.compile(UID_TEXT)


def parse_uid(text: str) -> uuid.UUID | None:
    """``text`` as a uid when it is one of the :data:`UID_TEXT` forms, else None."""
    low = text.lower()
    if _UID_TEXT.fullmatch(low) is None:
        return None
    return uuid.UUID(low.removeprefix("urn:uuid:").strip("{}"))


def md5_uuid(text: str) -> uuid.UUID:
    """Python twin of DuckDB's ``md5_number(text)::UUID``."""
    return uuid.UUID(int=int.from_bytes(hashlib.md5(text.encode("utf-8")).digest(), "little"))


def sample_uid(source: str, url: str | None = None, source_id: str | None = None, record: str | None = None) -> uuid.UUID:
    if source_id is not None:
        as_uid = parse_uid(source_id)
        if as_uid is not None:
            return as_uid
        return md5_uuid(f"{source}{SEP}id{SEP}{source_id}")
    if url is not None:
        return md5_uuid(f"{source}{SEP}{url}")
    if record is None:
        raise ValueError("a uid needs a source id, a url or a record")
    return md5_uuid(f"{source}{SEP}record{SEP}{record}")


def caption_id(uid: uuid.UUID | str, variant: str, text: str) -> uuid.UUID:
    return md5_uuid(f"{uid}{SEP}{variant}{SEP}{text}")


# SQL twins. ``$source`` is bound; the column expressions are substituted by the caller
# after they have been checked against the input's schema.
def uid_sql(url_expr: str) -> str:
    return f"md5_number($source || chr(31) || {url_expr})::UUID"


def uid_from_record_sql(record_expr: str) -> str:
    """SQL twin of ``sample_uid(source, record=...)``."""
    return f"md5_number($source || chr(31) || 'record' || chr(31) || {record_expr})::UUID"


def uid_from_id_sql(id_expr: str) -> str:
    """SQL twin of ``sample_uid(source, source_id=...)``: the :data:`UID_TEXT` forms are
    the uid (DuckDB's UUID cast reads the bare, dashed and braced forms), others are hashed."""
    low = f"lower({id_expr})"
    return (
        f"CASE WHEN regexp_full_match({low}, '{UID_TEXT}') THEN replace({low}, 'urn:uuid:', '')::UUID "
        f"ELSE md5_number($source || chr(31) || 'id' || chr(31) || {id_expr})::UUID END"
    )


def caption_id_sql(uid_expr: str, variant_expr: str, text_expr: str) -> str:
    return f"md5_number({uid_expr}::VARCHAR || chr(31) || {variant_expr} || chr(31) || {text_expr})::UUID"
