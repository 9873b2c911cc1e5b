"""Converters of ONNX's text ops: StringConcat, RegexFullMatch, StringSplit, StringNormalizer
and TfIdfVectorizer.

StringSplit and StringNormalizer with stopwords have output shapes that depend on the
strings: `add_data_dependent` folds them when the input is a constant, otherwise they run
on the host between compiled segments.
"""

from __future__ import annotations

import onnx

from ember.errors import UnsupportedOpError
from ember.frontends.onnx.importer import ImportContext, onnx_op
from ember.ir import Value

__all__: list[str] = []


@onnx_op("StringConcat")
def _string_concat(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    return [ctx.add("StringConcat", [ctx.input(node, 0), ctx.input(node, 1)])]


@onnx_op("RegexFullMatch")
def _regex_full_match(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    pattern = ctx.attr(node, "pattern")
    if pattern is None:
        raise UnsupportedOpError(f"{ctx.where}: attribute pattern is required")
    return [ctx.add("RegexFullMatch", [ctx.input(node, 0)], {"pattern": pattern})]


@onnx_op("StringSplit")
def _string_split(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    maxsplit = ctx.attr(node, "maxsplit")
    attrs = {"delimiter": ctx.attr(node, "delimiter", ""),
             "maxsplit": None if maxsplit is None else int(maxsplit)}
    return list(ctx.add_data_dependent("StringSplit", [ctx.input(node, 0)], attrs))


@onnx_op("StringNormalizer")
def _string_normalizer(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    attrs = {"case_change_action": ctx.attr(node, "case_change_action", "NONE"),
             "is_case_sensitive": int(ctx.attr(node, "is_case_sensitive", 0)),
             "stopwords": tuple(ctx.attr(node, "stopwords", ()) or ()),
             "locale": ctx.attr(node, "locale", "")}
    x = ctx.input(node, 0)
    if attrs["stopwords"]:
        return list(ctx.add_data_dependent("StringNormalizer", [x], attrs))
    return [ctx.add("StringNormalizer", [x], attrs)]


@onnx_op("TfIdfVectorizer")
def _tfidf(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    ints, strings = ctx.attr(node, "pool_int64s"), ctx.attr(node, "pool_strings")
    if (ints is None) == (strings is None):
        raise UnsupportedOpError(f"{ctx.where}: exactly one of pool_int64s and pool_strings "
                                 f"must be set")
    pool = tuple(int(v) for v in ints) if ints is not None else tuple(strings)
    attrs = {"mode": ctx.attr(node, "mode"),
             "min_gram_length": int(ctx.attr(node, "min_gram_length")),
             "max_gram_length": int(ctx.attr(node, "max_gram_length")),
             "max_skip_count": int(ctx.attr(node, "max_skip_count")),
             "ngram_counts": [int(v) for v in ctx.attr(node, "ngram_counts")],
             "ngram_indexes": [int(v) for v in ctx.attr(node, "ngram_indexes")],
             "pool": pool,
             "weights": [float(v) for v in ctx.attr(node, "weights", []) or []]}
    return [ctx.add("TfIdfVectorizer", [ctx.input(node, 0)], attrs)]
