"""QuantPlan: one row per layer (MatMul/Gemm/Conv node) with its precision and what it cost.

A plan is both a report (weight bytes before/after, the SQNR of the layer's output against
the float model, a device time when someone measured it) and an input: its precisions can
be given back to `ember.quantize(..., plan=...)` to write the same model again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field

__all__ = ["LayerPlan", "QuantPlan"]

PLAN_VERSION = 1


@dataclass
class LayerPlan:
    name: str
    op: str
    precision: str
    weight_bytes_before: int = 0
    weight_bytes_after: int = 0
    sqnr_db: float | None = None  # layer output, quantized model vs float, on one batch
    device_seconds: float | None = None  # filled by whoever measures it
    note: str = ""


@dataclass
class QuantPlan:
    layers: list[LayerPlan] = field(default_factory=list)
    scheme: str = ""

    def __iter__(self) -> Iterator[LayerPlan]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, name: str) -> LayerPlan:
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(f"no layer {name!r} in the plan")

    def precisions(self) -> dict[str, str]:
        return {row.name: row.precision for row in self.layers}

    @property
    def weight_bytes(self) -> tuple[int, int]:
        """(before, after) over all layers."""
        return (sum(r.weight_bytes_before for r in self.layers),
                sum(r.weight_bytes_after for r in self.layers))

    def to_json(self) -> str:
        return json.dumps({"version": PLAN_VERSION, "scheme": self.scheme,
                           "layers": [asdict(r) for r in self.layers]}, indent=1)

    @classmethod
    def from_json(cls, text: str | Mapping) -> QuantPlan:
        data = json.loads(text) if isinstance(text, str) else dict(text)
        if data.get("version") != PLAN_VERSION:
            raise ValueError(f"quantization plan version {data.get('version')!r}; "
                             f"this ember reads version {PLAN_VERSION}")
        return cls([LayerPlan(**row) for row in data["layers"]], data.get("scheme", ""))

    def table(self) -> str:
        head = ("layer", "op", "precision", "bytes fp32", "bytes", "SQNR dB", "time ms", "note")
        rows = [head]
        for r in self.layers:
            rows.append((r.name, r.op, r.precision, str(r.weight_bytes_before),
                         str(r.weight_bytes_after),
                         "-" if r.sqnr_db is None else f"{r.sqnr_db:.1f}",
                         "-" if r.device_seconds is None else f"{r.device_seconds * 1e3:.3f}",
                         r.note))
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        before, after = self.weight_bytes
        lines.append(f"weights: {before} -> {after} bytes")
        return "\n".join(lines)

    __str__ = table
