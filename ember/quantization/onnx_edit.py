"""Small edits of an ONNX graph that the QDQ and float16 writers share: stable node names,
fresh tensor names, consumer lookups and a topological re-sort after insertions."""

from __future__ import annotations

import heapq
from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["LAYER_OPS", "copy_model", "name_nodes", "layers", "GraphEditor", "opset_of"]

# The layers a plan assigns a precision to, with the inputs that carry data (activation or
# weight); Conv's third and Gemm's third input is the bias.
LAYER_OPS: dict[str, tuple[int, ...]] = {"MatMul": (0, 1), "Gemm": (0, 1), "Conv": (0, 1)}


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def opset_of(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 1


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where every node has a unique name (unnamed ones become `<op>_<index>`), so
    that layers can be named in plans; a model whose names are already unique is unchanged."""
    copy = copy_model(model)
    seen: set[str] = set()
    for index, node in enumerate(copy.graph.node):
        if not node.name or node.name in seen:
            base = node.name or f"{node.op_type}_{index}"
            name, k = base, 1
            while name in seen:
                name, k = f"{base}_{k}", k + 1
            node.name = name
        seen.add(node.name)
    return copy


def layers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The MatMul/Gemm/Conv nodes of the main graph, in graph order."""
    return [n for n in model.graph.node if n.op_type in LAYER_OPS]


class GraphEditor:
    """Collects insertions into a model's main graph and writes them back in a valid order."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.initializers = {init.name: init for init in self.graph.initializer}
        self.names = {i.name for i in self.graph.input} | set(self.initializers)
        for node in self.graph.node:
            self.names.update(node.output)
        self.constants = set(self.initializers)
        for node in self.graph.node:
            if node.op_type == "Constant":
                self.constants.update(node.output)
        self.graph_outputs = {o.name for o in self.graph.output}
        self.graph_inputs = {i.name for i in self.graph.input} - set(self.initializers)

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.initializers[name])

    def add_initializer(self, tensor: onnx.TensorProto) -> str:
        self.names.add(tensor.name)
        self.initializers[tensor.name] = tensor
        self.graph.initializer.append(tensor)
        return tensor.name

    def add_array(self, base: str, value: np.ndarray) -> str:
        return self.add_initializer(numpy_helper.from_array(value, self.fresh(base)))

    def consumers(self) -> dict[str, list[onnx.NodeProto]]:
        found: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.graph.node:
            for name in node.input:
                if name:
                    found[name].append(node)
        return found

    def producer(self) -> dict[str, onnx.NodeProto]:
        return {out: node for node in self.graph.node for out in node.output if out}

    def add_node(self, node: onnx.NodeProto) -> None:
        self.names.update(node.output)
        self.graph.node.append(node)

    def drop_unused_initializers(self) -> None:
        used = {name for node in self.graph.node for name in node.input}
        used |= self.graph_outputs
        keep = [init for init in self.graph.initializer if init.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)

    def finish(self) -> onnx.ModelProto:
        """Sort the nodes topologically (insertions were appended) and drop dead weights."""
        available = {i.name for i in self.graph.input} | {i.name for i in self.graph.initializer}
        available.add("")
        nodes = list(self.graph.node)
        waiting: dict[str, list[int]] = defaultdict(list)
        unmet = [0] * len(nodes)
        for index, node in enumerate(nodes):
            for name in set(node.input) - available:
                waiting[name].append(index)
                unmet[index] += 1
        ready = [i for i, count in enumerate(unmet) if count == 0]
        heapq.heapify(ready)  # among ready nodes, keep the original order
        ordered: list[onnx.NodeProto] = []
        while ready:
            node = nodes[heapq.heappop(ready)]
            ordered.append(node)
            for name in node.output:
                for index in waiting.pop(name, ()):
                    unmet[index] -= 1
                    if unmet[index] == 0:
                        heapq.heappush(ready, index)
        if len(ordered) < len(nodes):
            raise ValueError(f"the rewritten graph reads tensors nobody writes: {sorted(waiting)[:5]}")
        del self.graph.node[:]
        self.graph.node.extend(ordered)
        self.drop_unused_initializers()
        return self.model
