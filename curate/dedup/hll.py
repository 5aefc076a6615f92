"""Approximate distinct counts with datasketch's HyperLogLog, for audits of large stores.

The values are hashed by DuckDB (``hash()``, low 32 bits) while the captions stream
out in Arrow batches; the HyperLogLog registers are then filled with numpy exactly as
``datasketch.HyperLogLog.update`` fills them for the same 32-bit hash values
(:func:`registers`, tested against ``update``), and datasketch's ``count()`` gives the
estimate. Memory is ``2^p`` bytes per group, whatever the store's size; the relative
standard error is about ``1.04 / sqrt(2^p)`` (0.81% at the default ``p = 14``).
Registers of two stores or two runs merge by element-wise maximum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..store import Store
from .normalize import normalize_sql

#: what can be counted: the stored text, or its normal form (SQL twin of normalize_text)
VALUES = {"text": "text", "normalised": normalize_sql("text")}


def registers(h32: np.ndarray, p: int, reg: np.ndarray | None = None) -> np.ndarray:
    """HyperLogLog registers (``int8``, ``2^p``) after adding 32-bit hash values ``h32``.

    As datasketch: register index = the low ``p`` bits; rank = ``32 - p - bit_length(h >> p) + 1``."""
    if not 4 <= p <= 16:
        raise ConfigError(f"HyperLogLog precision p must be in 4..16, got {p}")
    m = 1 << p
    out = np.zeros(m, dtype=np.int8) if reg is None else reg
    h = np.asarray(h32, dtype=np.uint64) & np.uint64(0xFFFFFFFF)
    idx = (h & np.uint64(m - 1)).astype(np.int64)
    bits = h >> np.uint64(p)
    bitlen = np.frexp(bits.astype(np.float64))[1]  # exact: bits < 2^28; frexp(0) gives 0
    rank = (32 - p - bitlen + 1).astype(np.int8)
    np.maximum.at(out, idx, rank)
    return out


def estimate(reg: np.ndarray) -> float:
    """datasketch's HyperLogLog estimate for the registers."""
    import warnings

    from .._optional import require

    ds = require("datasketch", purpose="approximate distinct counts")
    with warnings.catch_warnings():  # "close to the correction threshold": a warning, not an error
        warnings.simplefilter("ignore")
        return float(ds.HyperLogLog(reg=reg.copy()).count())


@dataclass
class DistinctCount:
    variant: str
    counted: int  # captions with a non-empty value
    approx_distinct: float
    exact_distinct: int | None = None

    @property
    def error(self) -> float | None:
        if self.exact_distinct is None or self.exact_distinct == 0:
            return None
        return self.approx_distinct / self.exact_distinct - 1.0


def distinct_counts(store: Store, *, value: str = "normalised", p: int = 14, exact: bool = False,
                    batch_size: int = 200_000) -> list[DistinctCount]:
    """Approximate distinct ``value`` ('text' or 'normalised') per caption variant; with
    ``exact``, also DuckDB's exact ``count(DISTINCT ...)`` to compare. Normal forms that are
    empty (no words) are not counted."""
    if value not in VALUES:
        raise ConfigError(f"value must be one of {', '.join(VALUES)}, got {value!r}")
    expr = VALUES[value]
    regs: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    cur = store.con.cursor()
    try:
        sql = (f"SELECT variant, (hash(v) & 4294967295)::UBIGINT AS h FROM "
               f"(SELECT variant, {expr} AS v FROM captions) WHERE v <> ''")
        for b in cur.sql(sql).to_arrow_reader(batch_size):
            var = b.column(0).to_numpy(zero_copy_only=False)
            h = b.column(1).to_numpy()
            for name in np.unique(var):
                sel = var == name
                reg = regs.setdefault(str(name), np.zeros(1 << p, dtype=np.int8))
                registers(h[sel], p, reg)
                counts[str(name)] = counts.get(str(name), 0) + int(sel.sum())
        exact_counts = {}
        if exact:
            exact_counts = dict(cur.execute(
                f"SELECT variant, count(DISTINCT v) FROM (SELECT variant, {expr} AS v FROM captions) "
                f"WHERE v <> '' GROUP BY variant").fetchall())
    finally:
        cur.close()
    return [DistinctCount(k, counts[k], estimate(regs[k]), exact_counts.get(k)) for k in sorted(regs)]
