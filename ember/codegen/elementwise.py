"""Elementwise kernels generated from an expression DAG.

An `ElementwiseSpec` lists the kernel's input tensors and a small DAG of elementwise ops over
them; one op node is the one-node DAG, and fused regions (later) are bigger DAGs of the same
form. `C_EXPRESSIONS` says, per op, how one element is computed in OpenCL C.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ember.codegen.families import Target
from ember.codegen.kernels import IN, OUT, Kernel, Launch, Lowered, NodeSpec, kernel_builder
from ember.codegen.render import broadcast_strides, c_literal, contiguous_strides, kernel_name, render
from ember.ir import OPS, Attrs, DType, TensorType
from ember.ir.ops.fused import ExprNode, FusedExpr

__all__ = [
    "ExprNode", "ElementwiseSpec", "C_EXPRESSIONS", "compute_type", "load_expr", "store_stmt",
    "render_elementwise", "pointer_type",
]


@dataclass(frozen=True)
class ElementwiseSpec:
    inputs: tuple[TensorType, ...]
    shape: tuple[int, ...]  # output shape (every output has it)
    nodes: tuple[ExprNode, ...]
    outputs: tuple[int, ...]  # value indices written to the kernel's outputs, in order

    def value_dtype(self, index: int) -> DType:
        n = len(self.inputs)
        return self.inputs[index].dtype if index < n else self.nodes[index - n].dtype


# -- types ----------------------------------------------------------------------------------
def compute_type(dtype: DType) -> str:
    """The C type values of `dtype` are computed in (half is computed in float)."""
    return "float" if dtype is DType.FLOAT16 else dtype.cl_name


def pointer_type(dtype: DType) -> str:
    return dtype.cl_name


def load_expr(dtype: DType, pointer: str, offset: str) -> str:
    if dtype is DType.FLOAT16:
        return f"vload_half({offset}, {pointer})"
    return f"{pointer}[{offset}]"


def store_stmt(dtype: DType, pointer: str, offset: str, value: str) -> str:
    if dtype is DType.FLOAT16:
        return f"vstore_half({value}, {offset}, {pointer});"
    return f"{pointer}[{offset}] = {value};"


def extensions_for(dtypes: Sequence[DType]) -> frozenset[str]:
    return frozenset({"cl_khr_fp64"}) if DType.FLOAT64 in dtypes else frozenset()


# -- per-op C expressions -------------------------------------------------------------------
# Each entry: (args, attrs, arg dtypes, out dtype) -> C expression in the out compute type.
ExprFn = Callable[[list[str], Attrs, list[DType], DType], str]


def _binary(symbol: str) -> ExprFn:
    return lambda a, at, dt, out: f"({a[0]} {symbol} {a[1]})"


def _compare(symbol: str) -> ExprFn:
    return lambda a, at, dt, out: f"(uchar)({a[0]} {symbol} {a[1]})"


def _float_fn(expr: str) -> ExprFn:
    """A float-only function written with {x} (the argument) and {T} (the compute type)."""
    return lambda a, at, dt, out: "(" + expr.format(x=a[0], T=compute_type(out)) + ")"


def _lit(value: float, dtype: DType) -> str:
    return c_literal(value, DType.FLOAT32 if dtype is DType.FLOAT16 else dtype)


def _cast(a: list[str], attrs: Attrs, dt: list[DType], out: DType) -> str:
    source = dt[0]
    if out is DType.BOOL:
        return f"(uchar)({a[0]} != 0)"
    target = compute_type(out)
    if source.is_float and not out.is_float:
        # NaN -> 0 and saturation differ between devices; numpy's cast is C's truncation.
        return f"({target})({a[0]})"
    return f"({target})({a[0]})"


def _clip(a: list[str], attrs: Attrs, dt: list[DType], out: DType) -> str:
    x = a[0]
    if attrs["min"] is not None:
        lo = _lit(attrs["min"], out)
        x = f"({x} < {lo} ? {lo} : {x})"
    if attrs["max"] is not None:
        hi = _lit(attrs["max"], out)
        x = f"({x} > {hi} ? {hi} : {x})"
    return x


def _abs(a, at, dt, out):
    if out.is_float:
        return f"fabs({a[0]})"
    if not out.is_signed:
        return a[0]
    return f"({compute_type(out)})abs({a[0]})"


def _sign(a, at, dt, out):
    t = compute_type(out)
    core = f"({t})(({a[0]} > 0) - ({a[0]} < 0))"
    return f"(isnan({a[0]}) ? {a[0]} : {core})" if out.is_float else core


def _max_min(greater: bool) -> ExprFn:
    def expr(a, at, dt, out):
        cmp = ">" if greater else "<"
        nan = f" || isnan({a[0]})" if out.is_float else ""
        return f"(({a[0]} {cmp} {a[1]}{nan}) ? {a[0]} : {a[1]})"

    return expr


def _with_alpha(template: str, *names: str) -> ExprFn:
    def expr(a, attrs, dt, out):
        values = {name: _lit(attrs[name], out) for name in names}
        return "(" + template.format(x=a[0], T=compute_type(out), **values) + ")"

    return expr


def _erf_fn(dtype: DType) -> str:
    """ember_erf (kernels.HELPERS) for float and half, the builtin for double."""
    return "erf" if dtype is DType.FLOAT64 else "ember_erf"


def _gelu(a, attrs, dt, out):
    x = a[0]
    if attrs["approximate"] == "tanh":
        return f"(0.5f * {x} * (1.0f + tanh(0.7978845608028654f * ({x} + 0.044715f * {x} * {x} * {x}))))"
    return f"(0.5f * {x} * (1.0f + {_erf_fn(out)}({x} * 0.7071067811865476f)))"


def _isinf(a, attrs, dt, out):
    x = a[0]
    neg, pos = attrs["detect_negative"], attrs["detect_positive"]
    if neg and pos:
        return f"(uchar)isinf({x})"
    if pos:
        return f"(uchar)(isinf({x}) && {x} > 0)"
    if neg:
        return f"(uchar)(isinf({x}) && {x} < 0)"
    return "(uchar)0"


C_EXPRESSIONS: dict[str, ExprFn] = {
    "Add": _binary("+"),
    "Sub": _binary("-"),
    "Mul": _binary("*"),
    "Div": _binary("/"),
    "Pow": lambda a, at, dt, out: f"pow({a[0]}, ({compute_type(out)}){a[1]})",
    "Max": _max_min(True),
    "Min": _max_min(False),
    "PRelu": lambda a, at, dt, out: f"({a[0]} < 0 ? {a[0]} * {a[1]} : {a[0]})",
    "Neg": lambda a, at, dt, out: f"(-{a[0]})",
    "Abs": _abs,
    "Sign": _sign,
    "Relu": lambda a, at, dt, out: f"({a[0]} < 0 ? ({compute_type(out)})0 : {a[0]})",
    "Clip": _clip,
    "Sqrt": _float_fn("sqrt({x})"),
    "Reciprocal": _float_fn("(({T})1 / {x})"),
    "Exp": _float_fn("exp({x})"),
    "Log": _float_fn("log({x})"),
    "Floor": _float_fn("floor({x})"),
    "Ceil": _float_fn("ceil({x})"),
    "Round": _float_fn("rint({x})"),
    "Erf": lambda a, at, dt, out: f"{_erf_fn(out)}({a[0]})",
    "Tanh": _float_fn("tanh({x})"),
    "Sin": _float_fn("sin({x})"),
    "Cos": _float_fn("cos({x})"),
    "Sigmoid": _float_fn("(({T})1 / (({T})1 + exp(-{x})))"),
    "Softplus": _float_fn("(fmax({x}, ({T})0) + log1p(exp(-fabs({x}))))"),
    "Mish": _float_fn("({x} * tanh(fmax({x}, ({T})0) + log1p(exp(-fabs({x})))))"),
    "Gelu": _gelu,
    "LeakyRelu": _with_alpha("({x} < 0 ? {alpha} * {x} : {x})", "alpha"),
    "Elu": _with_alpha("({x} < 0 ? {alpha} * (exp({x}) - ({T})1) : {x})", "alpha"),
    "Selu": _with_alpha("({x} <= 0 ? {gamma} * {alpha} * (exp({x}) - ({T})1) : {gamma} * {x})", "alpha", "gamma"),
    # clamps as ternaries: NaN stays NaN as in np.clip, and PoCL calls fmin/fmax out of line
    "HardSigmoid": _with_alpha("({alpha} * {x} + {beta} < ({T})0 ? ({T})0 : ({alpha} * {x} + "
                               "{beta} > ({T})1 ? ({T})1 : {alpha} * {x} + {beta}))",
                               "alpha", "beta"),
    "HardSwish": _float_fn("({x} * ({x} / ({T})6 + ({T})0.5 < ({T})0 ? ({T})0 : ({x} / ({T})6 "
                           "+ ({T})0.5 > ({T})1 ? ({T})1 : {x} / ({T})6 + ({T})0.5)))"),
    "Swish": _with_alpha("({x} / (({T})1 + exp(-({alpha} * {x}))))", "alpha"),
    "Equal": _compare("=="),
    "Less": _compare("<"),
    "LessOrEqual": _compare("<="),
    "Greater": _compare(">"),
    "GreaterOrEqual": _compare(">="),
    "Not": lambda a, at, dt, out: f"(uchar)(!{a[0]})",
    "And": lambda a, at, dt, out: f"(uchar)({a[0]} && {a[1]})",
    "Or": lambda a, at, dt, out: f"(uchar)({a[0]} || {a[1]})",
    "Xor": lambda a, at, dt, out: f"(uchar)(({a[0]} != 0) != ({a[1]} != 0))",
    "IsNaN": lambda a, at, dt, out: f"(uchar)isnan({a[0]})",
    "IsInf": _isinf,
    "Where": lambda a, at, dt, out: f"({a[0]} ? {a[1]} : {a[2]})",
    "Cast": _cast,
}

# Ops whose C form is only right for float operands.
_FLOAT_ONLY = {"Pow", "IsNaN", "IsInf"}


def expression_supported(node: ExprNode, arg_dtypes: Sequence[DType]) -> bool:
    if node.op not in C_EXPRESSIONS:
        return False
    if node.op in _FLOAT_ONLY and not all(d.is_float for d in arg_dtypes[:1]):
        return False
    if node.op == "Pow" and not arg_dtypes[1].is_float and not arg_dtypes[1].is_integer:
        return False
    return True


# -- rendering ------------------------------------------------------------------------------
def render_elementwise(spec: ElementwiseSpec, target: Target) -> Lowered | None:
    n_in = len(spec.inputs)
    for k, node in enumerate(spec.nodes):
        if not expression_supported(node, [spec.value_dtype(i) for i in node.args]):
            return None
    size = 1
    for dim in spec.shape:
        size *= dim
    rank = len(spec.shape)
    out_strides = contiguous_strides(spec.shape)
    inputs = []
    for i, t in enumerate(spec.inputs):
        if t.size == 1:
            mode = "scalar"
        elif t.shape == spec.shape:
            mode = "same"
        else:
            mode = "strided"
        inputs.append(
            {
                "mode": mode,
                "ptr": pointer_type(t.dtype),
                "load": load_expr(t.dtype, f"in{i}", f"off{i}"),
                "strides": broadcast_strides(t.shape, spec.shape),
                "ctype": compute_type(t.dtype),
            }
        )
    body = []
    for k, node in enumerate(spec.nodes):
        args = [f"v{i}" for i in node.args]
        arg_dtypes = [spec.value_dtype(i) for i in node.args]
        expr = C_EXPRESSIONS[node.op](args, node.attrs, arg_dtypes, node.dtype)
        body.append(f"const {compute_type(node.dtype)} v{n_in + k} = {expr};")
    outputs = []
    for j, index in enumerate(spec.outputs):
        dtype = spec.value_dtype(index)
        outputs.append(
            {"ptr": pointer_type(dtype), "store": store_stmt(dtype, f"out{j}", "i", f"v{index}")}
        )
    index_type = "int" if size < 2**31 else "long"
    dtypes = [t.dtype for t in spec.inputs] + [n.dtype for n in spec.nodes]
    name = kernel_name("ew", spec)
    source = render(
        "elementwise.cl.j2",
        name=name,
        inputs=inputs,
        outputs=outputs,
        body=body,
        size=size,
        rank=rank,
        shape=spec.shape,
        out_strides=out_strides,
        idx=index_type,
        label=" ".join(n.op for n in spec.nodes),
    )
    kernel = Kernel(name, source, extensions_for(dtypes))
    if size == 0:
        return Lowered(())
    args = tuple((IN, i) for i in range(n_in)) + tuple((OUT, j) for j in range(len(outputs)))
    return Lowered((Launch(kernel, (size,), None, args),))


@kernel_builder(*[op.name for op in OPS if op.elementwise and op.name != "FusedElementwise"])
def build_elementwise(spec: NodeSpec, target: Target) -> Lowered | None:
    """One elementwise op node as a one-node DAG."""
    n_in = len(spec.inputs)
    node = ExprNode(spec.op, tuple(range(n_in)), spec.attrs, spec.outputs[0].dtype)
    return render_elementwise(
        ElementwiseSpec(spec.inputs, spec.outputs[0].shape, (node,), (n_in,)), target
    )


@kernel_builder("FusedElementwise")
def build_fused_elementwise(spec: NodeSpec, target: Target) -> Lowered | None:
    """A fused region: its whole DAG in one kernel, every output written by it."""
    expr: FusedExpr = spec.attrs["expr"]
    return render_elementwise(
        ElementwiseSpec(spec.inputs, spec.outputs[0].shape, expr.nodes, expr.outputs), target
    )
