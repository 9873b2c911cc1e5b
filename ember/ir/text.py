"""Readable text dump of a graph and Graphviz dot export."""

from __future__ import annotations

from ember.ir.graph import Graph, Value

__all__ = ["to_text", "to_dot"]


def _value_name(graph: Graph, value: Value) -> str:
    name = graph.node_name(value.node)
    return f"%{name}" if len(graph.output_types(value.node)) == 1 else f"%{name}.{value.port}"


def _format_attrs(graph: Graph, node: int) -> str:
    attrs = graph.attrs(node)
    if graph.op(node) in ("Input", "Constant"):
        return ""
    return " " + repr(attrs) if len(attrs) else ""


def to_text(graph: Graph) -> str:
    """One line per node: `%out: type = Op(%in, ...) {attrs}`."""
    lines = [f"graph {graph.name} {{"]
    for node in graph.topological_order():
        types = ", ".join(str(t) for t in graph.output_types(node))
        op = graph.op(node)
        if op == "Input":
            lines.append(f"  input %{graph.node_name(node)}: {types}")
            continue
        if op == "Constant":
            value = graph.attrs(node)["value"]
            preview = f" = {value.tolist()}" if value.size <= 8 else ""
            lines.append(f"  const %{graph.node_name(node)}: {types}{preview}")
            continue
        args = ", ".join(_value_name(graph, v) for v in graph.inputs_of(node))
        extra = ""
        placement = graph.meta(node, "placement")
        if placement:
            extra = f"  @{placement}"
        lines.append(
            f"  %{graph.node_name(node)}: {types} = {op}({args}){_format_attrs(graph, node)}{extra}"
        )
    outs = ", ".join(f"{name}=%{graph.node_name(v.node)}" for name, v in graph.outputs)
    lines.append(f"  return {outs}")
    lines.append("}")
    return "\n".join(lines)


def _quote(*lines: str) -> str:
    """A quoted DOT string of `lines`, joined by DOT's newline escape."""
    escaped = [line.replace("\\", "\\\\").replace('"', '\\"') for line in lines]
    return '"' + "\\n".join(escaped) + '"'


def to_dot(graph: Graph) -> str:
    """Graphviz source: ops as boxes labelled with op and output type, edges as tensors."""
    lines = [f"digraph {_quote(graph.name)} {{", "  node [shape=box, fontname=monospace];"]
    for node in graph.topological_order():
        op = graph.op(node)
        label = [graph.node_name(node), op]
        # fused nodes say what they contain: the region's ops, or the epilogue's
        fused = graph.attrs(node).get("expr") or graph.attrs(node).get("epilogue")
        if fused is not None:
            label.append(f"fused: {fused.label}")
        label.append(", ".join(str(t) for t in graph.output_types(node)))
        shape = "ellipse" if op in ("Input", "Constant") else "box"
        lines.append(f"  n{node} [label={_quote(*label)}, shape={shape}];")
    for u, v, data in graph.nx.edges(data=True):
        lines.append(f"  n{u} -> n{v} [label={_quote(str(data['in']))}];")
    for name, value in graph.outputs:
        lines.append(f"  out_{name.replace('-', '_')} [label={_quote(name)}, shape=plaintext];")
    for name, value in graph.outputs:
        lines.append(f"  n{value.node} -> out_{name.replace('-', '_')};")
    lines.append("}")
    return "\n".join(lines)
