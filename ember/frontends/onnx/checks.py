"""ember's own checks of an ONNX model, run before onnx's checker.

onnx's checker reports the first problem it meets in its own words; what ember cannot compile
is better said in ember's: every unsupported op at once with its node, the nodes on a cycle,
an opset newer than the converters know. These checks read the proto only (no converter
runs), so they are cheap enough to run on every load.
"""

from __future__ import annotations

from collections.abc import Container, Iterator

import networkx as nx
import onnx

from ember.errors import ModelLoadError, UnsupportedOpError

__all__ = ["DEFAULT_DOMAINS", "LEGACY_DOMAIN", "MAX_OPSET", "REVIEWED_OPSET", "check_model",
           "check_text",
           "check_opsets", "check_ops", "check_acyclic", "node_label", "default_opset",
           "op_key"]

DEFAULT_DOMAINS = ("", "ai.onnx")

# The newest ONNX opset whose operator changes the converters were written against: the
# installed onnx's backend node tests for ember's ops (tests/onnx_node_suite.py) reach it.
REVIEWED_OPSET = 28
# The newest opset ember accepts: the reviewed one, or less when the installed onnx is older
# (its checker and version converter know nothing newer than its own opset).
MAX_OPSET = min(REVIEWED_OPSET, onnx.defs.onnx_opset_version())


def node_label(node: onnx.NodeProto) -> str:
    """How messages name a node: its op type and its name (its first output when unnamed)."""
    name = node.name or (node.output[0] if node.output else "")
    return f"{node.op_type} {name!r}"


# onnx's version converter rewrites an opset-8 Scan (batch axis first, scan axis 1) as an
# opset-9 Scan without that axis, changing the model's declared inputs; the loader sends
# such nodes through the conversion under this domain, and they are converted with their
# own semantics (frontends/onnx/control_flow.py).
LEGACY_DOMAIN = "ember.legacy"


def op_key(op_type: str, domain: str = "") -> str:
    """How converters are keyed: the op type for ONNX's own domain, else 'domain.op_type',
    so that an op of another domain never takes the converter of a same-named ONNX op."""
    return op_type if domain in DEFAULT_DOMAINS else f"{domain}.{op_type}"


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)


def check_opsets(model: onnx.ModelProto, where: str) -> None:
    """An ONNX opset newer than MAX_OPSET: UnsupportedOpError naming it and the limit."""
    opset = default_opset(model)
    if opset > MAX_OPSET:
        raise UnsupportedOpError(
            f"{where} imports ONNX opset {opset}; ember supports ONNX opsets up to {MAX_OPSET} "
            f"(export the model at opset {MAX_OPSET} or lower)")


def check_ops(graph: onnx.GraphProto, opset: int, domains: dict[str, int],
              known: Container[str]) -> None:
    """One UnsupportedOpError naming every op type that `known` lacks (with a node using it
    and the opset); ops of other domains are known as 'domain.op_type' (see `op_key`)."""
    missing: dict[str, list[onnx.NodeProto]] = {}
    for node in _nodes_with_subgraphs(graph):
        key = op_key(node.op_type, node.domain or "")
        if key not in known:
            missing.setdefault(key, []).append(node)
    if not missing:
        return
    described = [_describe_missing(op, nodes, opset, domains) for op, nodes in missing.items()]
    text = f"{described[0]} is not supported by ember"
    if len(described) > 1:
        text += "; the model also uses unsupported: " + ", ".join(described[1:])
    raise UnsupportedOpError(text)


def _nodes_with_subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of `graph` and of the If/Loop/Scan bodies nested in it."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _nodes_with_subgraphs(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _nodes_with_subgraphs(subgraph)


def _describe_missing(op: str, nodes: list[onnx.NodeProto], opset: int,
                      domains: dict[str, int]) -> str:
    first = nodes[0]
    name = first.name or (first.output[0] if first.output else "")
    count = f", {len(nodes)} nodes" if len(nodes) > 1 else ""
    domain = first.domain or ""
    if domain in DEFAULT_DOMAINS:
        return f"ONNX op {op} (node {name!r}, opset {opset}{count})"
    version = domains.get(domain)
    imported = f"opset {version}" if version is not None else "not imported by the model"
    return (f"op {op} of domain {domain!r} (node {name!r}, {imported}{count}; ember converts "
            f"the default ONNX domain and a few ai.onnx.ml and com.microsoft ops)")


def check_acyclic(graph: onnx.GraphProto, where: str) -> None:
    """A cycle (a node reading, through other nodes or directly, its own output):
    ModelLoadError naming the nodes on it in order."""
    producer: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.output:
            if name:
                producer[name] = index
    edges = nx.DiGraph()
    edges.add_nodes_from(range(len(graph.node)))
    for index, node in enumerate(graph.node):
        for name in node.input:
            if name in producer:
                edges.add_edge(producer[name], index)
    if nx.is_directed_acyclic_graph(edges):  # the common case, several times faster
        return
    try:
        cycle = nx.find_cycle(edges)
    except nx.NetworkXNoCycle:
        return
    path = [graph.node[u] for u, _ in cycle] + [graph.node[cycle[0][0]]]
    raise ModelLoadError(f"{where}: the graph has a cycle through nodes "
                         + " -> ".join(node_label(n) for n in path))


def _is_repeated(field) -> bool:
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return field.label == field.LABEL_REPEATED  # protobuf before 6


def _undecodable_text(message, path: str) -> Iterator[str]:
    """Paths of string fields that protobuf hands back as bytes (not valid UTF-8)."""
    for field, value in message.ListFields():
        values = value if _is_repeated(field) else [value]
        if field.type == field.TYPE_STRING:
            if any(isinstance(v, bytes) for v in values):
                yield f"{path}.{field.name}"
        elif field.type == field.TYPE_MESSAGE:
            for index, item in enumerate(values):
                at = f"{path}.{field.name}" + (f"[{index}]" if _is_repeated(field) else "")
                yield from _undecodable_text(item, at)


def check_text(model: onnx.ModelProto, where: str) -> None:
    """Names and other text fields must be UTF-8: protobuf lets invalid text through as bytes,
    which no name lookup or message can use."""
    bad = next(_undecodable_text(model, "model"), None)
    if bad is not None:
        raise ModelLoadError(f"{where}: {bad} is not valid UTF-8 text (corrupted file?)")


def check_model(model: onnx.ModelProto, where: str, known: Container[str]) -> None:
    """Every check above, in the order a user wants to hear them: readable text, the opset
    the model was written for, then the ops, then the graph's shape."""
    check_text(model, where)
    check_opsets(model, where)
    domains = {o.domain: o.version for o in model.opset_import}
    check_ops(model.graph, default_opset(model), domains, known)
    check_acyclic(model.graph, where)
