"""Stable identifiers.

``uid`` (a sample) and ``caption_id`` (a caption variant) are 128-bit values stored as
DuckDB ``UUID``. They are computed in SQL by :data:`UID_SQL` / :data:`CAPTION_ID_SQL`
and, for tests and Python-side readers, by the twins below; the two must agree.

* A source's own id wins: a 32-hex-digit id (DataComp's ``uid``) is the uid itself;
  any other id string is hashed with the source name.
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
_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")


def md5_uuid(text: str) -> uuid.UUID:
    """Python twin of DuckDB's ``md5_number(text)::UUID``."""
    return uuid.UUID(int=int.from_bytes(hashlib.md5(text.encode("utf-8")).digest(), "little"))


def sample_uid(source: str, url: str | None = None, source_id: str | None = None, record: str | None = None) -> uuid.UUID:
    if source_id is not None:
        if _HEX32.match(source_id):
            return uuid.UUID(hex=source_id)
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
    return (
        f"CASE WHEN regexp_full_match({id_expr}, '[0-9a-fA-F]{{32}}') THEN {id_expr}::UUID "
        f"ELSE md5_number($source || chr(31) || 'id' || chr(31) || {id_expr})::UUID END"
    )


def caption_id_sql(uid_expr: str, variant_expr: str, text_expr: str) -> str:
    return f"md5_number({uid_expr}::VARCHAR || chr(31) || {variant_expr} || chr(31) || {text_expr})::UUID"
