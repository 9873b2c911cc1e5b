"""Text ops: StringConcat, RegexFullMatch, StringSplit, StringNormalizer, TfIdfVectorizer.

Strings are DType.STRING, numpy object arrays of Python `str`; they have no OpenCL type, so
these ops (and any op that reads or writes a string) always run on the host. StringSplit's
output width is the largest number of pieces, and StringNormalizer with stopwords keeps a
number of elements that only the data tells: their `infer` raises DataDependentError, and
the converters fold them when the input is a constant (else the node runs between compiled
segments). RegexFullMatch uses Python's `re`, whose syntax agrees with RE2 (what ONNX names)
on the common constructs; a pattern `re` cannot compile is refused when the node is built.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Sequence

import numpy as np

from ember.errors import DataDependentError, DTypeError, ShapeError, UnsupportedOpError
from ember.ir.attrs import AttrKind, Attrs
from ember.ir.dtypes import DType
from ember.ir.ops.common import broadcast_shapes
from ember.ir.ops.registry import OPS, OpDef, attr
from ember.ir.types import TensorType

__all__ = ["CASE_ACTIONS", "TFIDF_MODES", "strings_array"]

CASE_ACTIONS = ("NONE", "LOWER", "UPPER")
TFIDF_MODES = ("TF", "IDF", "TFIDF")
_S, _I, _ANY = AttrKind.STRING, AttrKind.INT, AttrKind.ANY


def strings_array(values, shape: Sequence[int] | None = None) -> np.ndarray:
    """An object array of `str` (numpy's fixed-width text arrays would truncate writes)."""
    flat = list(np.asarray(values, dtype=object).reshape(-1))
    out = np.empty(len(flat), dtype=object)
    out[:] = [str(v) for v in flat]
    return out.reshape(np.shape(values) if shape is None else tuple(shape))


def _require_strings(t: TensorType, what: str) -> None:
    if t.dtype is not DType.STRING:
        raise DTypeError(f"{what} must be string, got {t.dtype}")


# -- StringConcat -----------------------------------------------------------------------------
def _infer_concat(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    for i, t in enumerate(inputs):
        _require_strings(t, f"StringConcat input {i}")
    return (inputs[0].with_shape(broadcast_shapes(inputs[0].shape, inputs[1].shape)),)


_join = np.frompyfunc(lambda a, b: str(a) + str(b), 2, 1)


def _string_concat(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    shape = broadcast_shapes(np.shape(x), np.shape(y))
    return strings_array(_join(x, y), shape)


OPS.register(OpDef(
    "StringConcat", _infer_concat, _string_concat, num_inputs=(2, 2),
    doc="Elementwise x + y of two broadcast string tensors.",
))


# -- RegexFullMatch ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise UnsupportedOpError(f"RegexFullMatch pattern {pattern!r} cannot be compiled: "
                                 f"{exc}") from exc


def _infer_regex(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    _require_strings(inputs[0], "RegexFullMatch input")
    _compiled(attrs["pattern"])
    return (inputs[0].with_dtype(DType.BOOL),)


def _regex_full_match(x: np.ndarray, *, pattern: str) -> np.ndarray:
    compiled = _compiled(pattern)
    flat = [compiled.fullmatch(str(s)) is not None for s in np.asarray(x).reshape(-1)]
    return np.array(flat, dtype=bool).reshape(np.shape(x))


OPS.register(OpDef(
    "RegexFullMatch", _infer_regex, _regex_full_match, attrs=(attr("pattern", _S),),
    doc="Whether each whole string matches the pattern.",
))


# -- StringSplit ------------------------------------------------------------------------------
def _data_dependent(op: str, why: str) -> DataDependentError:
    return DataDependentError(f"{op}: {why}")


def _infer_split(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    _require_strings(inputs[0], "StringSplit input")
    raise _data_dependent("StringSplit", "the number of substrings depends on the strings")


def _string_split(x: np.ndarray, *, delimiter: str = "", maxsplit: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Pieces padded with "" to the most any element has; an empty delimiter splits on
    runs of whitespace and drops the empty pieces at the ends (Python's split())."""
    limit = -1 if maxsplit is None else maxsplit
    pieces = [str(s).split(delimiter or None, limit) for s in np.asarray(x).reshape(-1)]
    width = max((len(p) for p in pieces), default=0)
    out = strings_array([p + [""] * (width - len(p)) for p in pieces] or np.empty((0, 0)),
                        np.shape(x) + (width,))
    lengths = np.array([len(p) for p in pieces], dtype=np.int64).reshape(np.shape(x))
    return out, lengths


OPS.register(OpDef(
    "StringSplit", _infer_split, _string_split,
    attrs=(attr("delimiter", _S, ""), attr("maxsplit", _I, None)), num_outputs=2,
    doc="Each string split at the delimiter (whitespace runs when empty), at most "
        "maxsplit times; the pieces padded with empty strings, and their counts.",
))


# -- StringNormalizer -------------------------------------------------------------------------
def _infer_normalizer(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x = inputs[0]
    _require_strings(x, "StringNormalizer input")
    if not (x.rank == 1 or (x.rank == 2 and x.shape[0] == 1)):
        raise ShapeError(f"StringNormalizer takes a [C] or [1, C] tensor, got {x.shape}")
    if attrs["stopwords"]:
        raise _data_dependent("StringNormalizer", "how many strings are stopwords depends "
                                                  "on the strings")
    return (x,)


def _string_normalizer(x: np.ndarray, *, case_change_action: str = "NONE",
                       is_case_sensitive: int = 0, stopwords: tuple[str, ...] = (),
                       locale: str = "") -> np.ndarray:
    """Stopwords are removed first (compared lowercased unless case sensitive), then the
    case changes; when nothing is left, one empty string remains."""
    fold = (lambda s: s) if is_case_sensitive else str.lower
    stops = {fold(w) for w in stopwords}
    kept = [str(s) for s in np.asarray(x).reshape(-1) if fold(str(s)) not in stops]
    change = {"LOWER": str.lower, "UPPER": str.upper}.get(case_change_action, lambda s: s)
    kept = [change(s) for s in kept] or [""]
    shape = (len(kept),) if np.ndim(x) == 1 else (1, len(kept))
    return strings_array(kept, shape)


OPS.register(OpDef(
    "StringNormalizer", _infer_normalizer, _string_normalizer,
    attrs=(attr("case_change_action", _S, "NONE", CASE_ACTIONS),
           attr("is_case_sensitive", _I, 0, (0, 1)), attr("stopwords", _ANY, ()),
           attr("locale", _S, "")),
    doc="Drops the stopwords from a [C] or [1, C] string tensor, then lower- or "
        "uppercases what is left.",
))


# -- TfIdfVectorizer --------------------------------------------------------------------------
def _ngram_table(attrs: Attrs) -> dict[tuple, int]:
    """n-gram (a tuple of pool items) -> output index, for the lengths counted."""
    pool = attrs["pool"]
    starts = list(attrs["ngram_counts"]) + [len(pool)]
    table: dict[tuple, int] = {}
    position = 0
    for n, (start, end) in enumerate(itertools.pairwise(starts), start=1):
        count = max(end - start, 0) // n
        for k in range(count):
            if attrs["min_gram_length"] <= n <= attrs["max_gram_length"]:
                table[tuple(pool[start + k * n:start + (k + 1) * n])] = \
                    attrs["ngram_indexes"][position + k]
        position += count
    return table


def _infer_tfidf(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x = inputs[0]
    strings = x.dtype is DType.STRING
    if x.dtype not in (DType.STRING, DType.INT32, DType.INT64):
        raise DTypeError(f"TfIdfVectorizer input must be string, int32 or int64, got {x.dtype}")
    if strings != all(isinstance(p, str) for p in attrs["pool"]) and attrs["pool"]:
        raise DTypeError(f"TfIdfVectorizer pool holds {'ints' if strings else 'strings'}; "
                         f"the input is {x.dtype}")
    if x.rank not in (1, 2):
        raise ShapeError(f"TfIdfVectorizer takes a [C] or [N, C] tensor, got {x.shape}")
    if not 1 <= attrs["min_gram_length"] <= attrs["max_gram_length"]:
        raise ShapeError("TfIdfVectorizer needs 1 <= min_gram_length <= max_gram_length")
    size = max(attrs["ngram_indexes"], default=-1) + 1
    weights = attrs["weights"]
    if weights and len(weights) < size:
        raise ShapeError(f"TfIdfVectorizer has {len(weights)} weights for {size} outputs")
    return (TensorType(x.shape[:-1] + (size,), DType.FLOAT32),)


def _row_counts(row: list, table: dict[tuple, int], attrs: Attrs, size: int) -> np.ndarray:
    counts = np.zeros(size, np.int64)
    low, high = attrs["min_gram_length"], attrs["max_gram_length"]
    for n in range(low, high + 1):
        # a unigram has no gaps: it is counted once, not once per skip
        for skip in range(attrs["max_skip_count"] + 1 if n > 1 else 1):
            step = skip + 1
            for start in range(len(row) - (n - 1) * step):
                index = table.get(tuple(row[start:start + (n - 1) * step + 1:step]))
                if index is not None:
                    counts[index] += 1
    return counts


def _tfidf(x: np.ndarray, **attrs) -> np.ndarray:
    attrs = Attrs(attrs)
    table = _ngram_table(attrs)
    size = max(attrs["ngram_indexes"], default=-1) + 1
    rows = np.asarray(x).reshape((1 if np.ndim(x) == 1 else np.shape(x)[0], np.shape(x)[-1]))
    counts = np.stack([_row_counts(r.tolist(), table, attrs, size) for r in rows]) \
        if len(rows) else np.zeros((0, size), np.int64)
    weights = np.asarray(attrs["weights"][:size], np.float64) if attrs["weights"] else None
    mode = attrs["mode"]
    if mode == "TF":
        out = counts.astype(np.float64)
    elif mode == "IDF":
        out = (counts > 0) * (1.0 if weights is None else weights)
    else:
        out = counts * (1.0 if weights is None else weights)
    return out.astype(np.float32).reshape(np.shape(x)[:-1] + (size,))


OPS.register(OpDef(
    "TfIdfVectorizer", _infer_tfidf, _tfidf,
    attrs=(attr("mode", _S, choices=TFIDF_MODES), attr("min_gram_length", _I),
           attr("max_gram_length", _I), attr("max_skip_count", _I),
           attr("ngram_counts", AttrKind.INTS), attr("ngram_indexes", AttrKind.INTS),
           attr("pool", _ANY), attr("weights", AttrKind.FLOATS, ())),
    doc="Counts, per row, the pool's n-grams (lengths min..max, items up to max_skip_count "
        "apart) and weighs the counts: TF the counts, IDF the weights of those seen, TFIDF "
        "both.",
))
