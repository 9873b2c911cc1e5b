"""Kernels that take their varying sizes as arguments, so one program serves every shape.

A kernel builder writes its sizes into the source as integer literals (`if (i >= 2048)`,
`#define ATT_SQ 16`). When a model is compiled for several values of a dim it does not fix
(a sequence length, a batch), the same builder gives sources that differ only in some of
those literals. This module finds them by comparing the kernels one step gets at a few
sizes: the source split into a skeleton (comments dropped, the kernel's own name replaced,
every decimal integer literal replaced by a marker) and the literals' values. Where the
skeletons are equal, the literals that differ become `const int` (or long / unsigned)
arguments appended to the kernel's parameters, and the rest stay literals. A kernel built
for a later shape is then answered by the generic kernel when its skeleton is the same and
every literal that stayed a literal has the same value: the argument values are the
literals it holds, so the generic kernel, given them, runs exactly the source the builder
wrote for that shape. A kernel that matches no generic kernel is built as it is.

A literal can become an argument only where C allows a value known at run time: inside the
kernel's body (directly, or through object-like macros used only there), never in an array
declarator, an attribute, a `case` label, a preprocessor condition or a helper function.
Kernels whose varying literals sit anywhere else are not generalized.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ember.codegen.types import Kernel

__all__ = [
    "GRID_DIMS",
    "GenericKernel",
    "GenericKernels",
    "GenericStore",
    "KernelForm",
    "from_json",
    "generalize",
    "kernel_form",
    "to_json",
]

_NAME = "EMBER_KERNEL_NAME"  # stands for the kernel's own name in a skeleton
_COMMENTS = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)
_TOKEN = re.compile(r"[A-Za-z_]\w*|\.?\d(?:[eEpP][+-]|[\w.])*|\n|\S")
_WORD = re.compile(r"[A-Za-z_]\w*|\.?\d(?:[eEpP][+-]|[\w.])*")
_INTEGER = re.compile(r"(0|[1-9]\d*)([uUlL]*)")
_INT32_MAX = 2**31 - 1
GRID_DIMS = 3
# a kernel that reads its grid's or work-group's size, or synchronizes a work-group, counts
# on the grid it is given: it is not guarded, and not launched on a padded grid
_GRID_BOUND = re.compile(r"\b(barrier|work_group_\w+|get_global_size|get_num_groups|"
                         r"get_local_size|get_enqueued_local_size|get_local_id|get_group_id|"
                         r"reqd_work_group_size)\b")
_DECLARED_WITH = frozenset({
    "__local", "local", "__private", "private", "__constant", "constant", "__global",
    "global", "const", "volatile", "static", "unsigned", "signed", "struct", "union",
})
_NO_RUNTIME_PREPROCESSOR = frozenset({"if", "elif", "ifdef", "ifndef", "pragma", "line",
                                      "error", "include"})


class _Token:
    """One token of a kernel's text (a plain class: kernels have thousands of them)."""

    __slots__ = ("text", "start", "end", "line_start")

    def __init__(self, text: str, start: int, end: int, line_start: bool) -> None:
        self.text = text
        self.start = start
        self.end = end
        self.line_start = line_start  # first on its line (a preprocessor line starts with #)


@dataclass(frozen=True)
class KernelForm:
    """A kernel's source as a skeleton and its integer literals, in order."""

    text: str  # comments dropped, the kernel's name replaced by _NAME
    skeleton: str  # text with every integer literal replaced by '#'
    literals: tuple[tuple[int, str], ...]  # (value, suffix) of each literal
    spans: tuple[tuple[int, int], ...]  # where each literal is in `text`


def _tokens(text: str) -> list[_Token]:
    found = []
    line_start = True
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token == "\n":
            line_start = True
            continue
        found.append(_Token(token, match.start(), match.end(), line_start))
        line_start = False
    return found


def kernel_form(kernel: Kernel) -> KernelForm:
    """The kernel's skeleton and literals (kept for the last few hundred kernels: a model's
    kernels are compared at every new shape)."""
    found = _FORMS.get(kernel.name)
    if found is None or found[0] != kernel.source:
        found = _FORMS[kernel.name] = (kernel.source, _kernel_form(kernel))
        while len(_FORMS) > _FORMS_KEPT:
            del _FORMS[next(iter(_FORMS))]
    return found[1]


_FORMS: dict[str, tuple[str, KernelForm]] = {}
_FORMS_KEPT = 512


def _kernel_form(kernel: Kernel) -> KernelForm:
    text = _COMMENTS.sub(" ", kernel.source).replace(kernel.name, _NAME)
    literals, spans, parts = [], [], []
    last = 0
    for match in _WORD.finditer(text):  # identifiers and numbers: literals are whole words
        literal = _INTEGER.fullmatch(match.group())
        if literal is None:
            continue
        literals.append((int(literal.group(1)), literal.group(2).lower()))
        spans.append((match.start(), match.end()))
        parts.append(text[last:match.start()])
        parts.append("#")
        last = match.end()
    parts.append(text[last:])
    return KernelForm(text, "".join(parts), tuple(literals), tuple(spans))


def _c_type(suffix: str, values: Sequence[int]) -> str | None:
    """The C type of an argument that replaces a literal with this suffix and these values,
    as C types the literal itself (int, else long; unsigned with 'u'); None if it fits none."""
    unsigned = "u" in suffix
    wide = "l" in suffix or max(values) > _INT32_MAX
    if max(values) >= 2**63:
        return None
    return ("u" if unsigned else "") + ("long" if wide else "int")


def _fits(c_type: str, value: int) -> bool:
    limit = 2**63 if "long" in c_type else 2**31
    return 0 <= value < (limit * 2 if c_type.startswith("u") else limit)


# -- where a literal may become an argument ---------------------------------------------------
def _matching(tokens: list[_Token], open_index: int, opening: str, closing: str) -> int:
    depth = 0
    for index in range(open_index, len(tokens)):
        if tokens[index].text == opening:
            depth += 1
        elif tokens[index].text == closing:
            depth -= 1
            if depth == 0:
                return index
    return len(tokens) - 1


def _kernel_layout(tokens: list[_Token]) -> tuple[int, int, int, int] | None:
    """Token indices of the kernel's parameter list's '(' and ')', and its body's '{' and
    '}'."""
    for index, token in enumerate(tokens):
        if token.text == _NAME and index + 1 < len(tokens) and tokens[index + 1].text == "(":
            if not any(t.text in ("__kernel", "kernel") for t in tokens[max(0, index - 40):index]):
                continue
            close = _matching(tokens, index + 1, "(", ")")
            if close + 1 >= len(tokens) or tokens[close + 1].text != "{":
                return None
            return index + 1, close, close + 1, _matching(tokens, close + 1, "{", "}")
    return None


def _directive(tokens: list[_Token], index: int) -> tuple[int, str] | None:
    """(index of '#', directive word) of the preprocessor line holding token `index`."""
    start = index
    while start > 0 and not tokens[start].line_start:
        start -= 1
    if tokens[start].text != "#" or start + 1 >= len(tokens):
        return None
    return start, tokens[start + 1].text


def _in_declarator_or_attribute(tokens: list[_Token], index: int) -> bool:
    """Whether token `index` sits where C wants a constant: an array declarator's bound, an
    attribute, or a case label."""
    depth_square = depth_round = 0
    for back in range(index - 1, -1, -1):
        text = tokens[back].text
        if text in (";", "{", "}"):
            return False
        if text == "case" and depth_round == 0 and depth_square == 0:
            return True
        if text == "__attribute__":
            return True
        if text == ")":
            depth_round -= 1
        elif text == "(":
            depth_round += 1
        elif text == "]":
            depth_square -= 1
        elif text == "[":
            depth_square += 1
            if depth_square == 1 and _declares(tokens, back):
                return True
    return False


def _declares(tokens: list[_Token], bracket: int) -> bool:
    """Whether the '[' at `bracket` opens an array declarator (`float acc[...]`), as
    opposed to an index (`x[...]`): the name before it follows a type or qualifier."""
    before = bracket - 1
    while before >= 0 and tokens[before].text == "]":  # a second dimension
        before = _opening(tokens, before) - 1
    if before < 1 or not re.fullmatch(r"[A-Za-z_]\w*", tokens[before].text):
        return False
    previous = tokens[before - 1].text
    return bool(re.fullmatch(r"[A-Za-z_]\w*", previous)) or previous in ("*", ",") and (
        any(t.text in _DECLARED_WITH for t in tokens[max(0, before - 8):before]))


def _opening(tokens: list[_Token], close: int) -> int:
    depth = 0
    for index in range(close, -1, -1):
        if tokens[index].text == "]":
            depth += 1
        elif tokens[index].text == "[":
            depth -= 1
            if depth == 0:
                return index
    return 0


def _runtime_ok(tokens: list[_Token], literal_indices: Sequence[int]) -> bool:
    """Whether every literal at `literal_indices` may become a kernel argument (module
    docstring): in the kernel body, or in object-like macros used only there."""
    layout = _kernel_layout(tokens)
    if layout is None:
        return False
    _, _, body_open, body_close = layout
    macros: dict[str, int] = {}  # macro name -> index of its '#'
    for index, token in enumerate(tokens):
        if token.text == "#" and token.line_start and index + 2 < len(tokens) \
                and tokens[index + 1].text == "define":
            macros[tokens[index + 2].text] = index
    tainted: set[str] = set()
    pending: list[int] = []
    for index in literal_indices:
        directive = _directive(tokens, index)
        if directive is None:
            pending.append(index)
            continue
        hash_index, word = directive
        if word != "define" or index <= hash_index + 2:
            return False
        name_token = tokens[hash_index + 2]
        if hash_index + 3 < len(tokens) and tokens[hash_index + 3].text == "(" \
                and tokens[hash_index + 3].start == name_token.end:
            # a function-like macro: allowed where it is defined inside the body
            if not body_open < hash_index < body_close:
                return False
            continue
        tainted.add(name_token.text)
    # macros whose definition uses a tainted macro are tainted too
    grew = True
    while grew:
        grew = False
        for name, hash_index in macros.items():
            if name in tainted:
                continue
            end = hash_index + 3
            while end < len(tokens) and not tokens[end].line_start:
                if tokens[end].text in tainted:
                    tainted.add(name)
                    grew = True
                    break
                end += 1
    for index, token in enumerate(tokens):
        if token.text in tainted:
            directive = _directive(tokens, index)
            if directive is not None:
                if directive[1] in _NO_RUNTIME_PREPROCESSOR:
                    return False
                continue  # its own #define / #undef, or another macro's definition
            pending.append(index)
    for index in pending:
        if not body_open < index < body_close:
            return False
        if _in_declarator_or_attribute(tokens, index):
            return False
    return True


@dataclass(frozen=True)
class GenericKernel:
    """A kernel whose varying literals are arguments (module docstring)."""

    kernel: Kernel  # generic source; `scalar_types` lists the appended arguments
    skeleton: str
    constants: tuple[tuple[int, str] | None, ...]  # per literal: fixed value, or None (argument)
    # the last GRID_DIMS arguments are the launch's real global size: work-items past it
    # return at once, so the grid may be padded to a fixed work-group size
    guarded: bool = False
    samples: tuple[Kernel, ...] = field(default=(), compare=False, repr=False)  # made from

    def match(self, form: KernelForm) -> tuple[int, ...] | None:
        """The argument values that make this kernel `form`'s kernel, or None."""
        if form.skeleton != self.skeleton or len(form.literals) != len(self.constants):
            return None
        values = []
        for literal, fixed in zip(form.literals, self.constants):
            if fixed is None:
                values.append(literal[0])
            elif fixed != literal:
                return None
        if not all(_fits(t, v) for t, v in zip(self.kernel.scalar_types, values)):
            return None
        return tuple(values)

    def arguments(self, values: tuple[int, ...], global_size: Sequence[int]) -> tuple[int, ...]:
        """All scalar arguments of a launch over `global_size` (the unpadded grid)."""
        if not self.guarded:
            return values
        grid = tuple(global_size) + (1,) * (GRID_DIMS - len(global_size))
        return values + grid


def generalize(samples: Sequence[Kernel]) -> GenericKernel | None:
    """The generic kernel of the same step's kernels at several sizes: samples whose
    skeleton differs from the first's are ignored; None when fewer than two remain, or a
    varying literal cannot become an argument."""
    forms = [kernel_form(k) for k in samples]
    first = forms[0]
    alike = [f for f in forms if f.skeleton == first.skeleton
             and len(f.literals) == len(first.literals)]
    if len(alike) < 2:
        return None
    varying = [i for i in range(len(first.literals))
               if len({f.literals[i] for f in alike}) > 1]
    tokens = _tokens(first.text)
    starts = {t.start: n for n, t in enumerate(tokens)}
    if varying and not _runtime_ok(tokens, [starts[first.spans[i][0]] for i in varying]):
        return None
    types = []
    for i in varying:
        c_type = _c_type(first.literals[i][1], [f.literals[i][0] for f in alike])
        if c_type is None:
            return None
        types.append(c_type)
    arguments = [f"ember_n{n}" for n in range(len(varying))]
    layout = _kernel_layout(tokens)
    if layout is None:
        return None
    guarded = _GRID_BOUND.search(first.text) is None
    if guarded:
        types += ["int"] * GRID_DIMS
        arguments += [f"ember_grid{d}" for d in range(GRID_DIMS)]
    # every edit in the coordinates of first.text, made from the last one back
    edits = [(*first.spans[i], f"({argument})") for i, argument in zip(varying, arguments)]
    if guarded:  # a first statement that sends work-items past the real grid home
        checks = " || ".join(f"get_global_id({d}) >= (size_t)ember_grid{d}"
                             for d in range(GRID_DIMS))
        body = tokens[layout[2]].end
        edits.append((body, body, f"\n    if ({checks}) return;"))
    if arguments:
        opening, close = tokens[layout[0]], tokens[layout[1]]
        joined = ", ".join(f"const {t} {a}" for t, a in zip(types, arguments))
        if first.text[opening.end:close.start].strip() in ("", "void"):
            edits.append((opening.end, close.start, joined))
        else:
            edits.append((close.start, close.start, ",\n    " + joined))
    text = first.text
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    name = f"{samples[0].name.rsplit('_', 1)[0]}_g{digest}"
    kernel = Kernel(name, text.replace(_NAME, name), samples[0].extensions, tuple(types))
    argument_at = set(varying)
    constants = tuple(None if i in argument_at else first.literals[i]
                      for i in range(len(first.literals)))
    used = tuple(k for k, f in zip(samples, forms) if f in alike)
    return GenericKernel(kernel, first.skeleton, constants, guarded, used)


def to_json(generic: GenericKernel) -> dict:
    """A generic kernel as JSON data: the concrete kernels it was made from. `from_json`
    makes it again from them, so a stored kernel is only ever what `generalize` makes of
    its samples, and answers only kernels of exactly their form."""
    return {"samples": [{"name": k.name, "source": k.source, "extensions": sorted(k.extensions)}
                        for k in generic.samples]}


def from_json(data: dict) -> GenericKernel | None:
    """The generic kernel `to_json` stored (None when its samples make none);
    ValueError/KeyError/TypeError when `data` is not what to_json writes."""
    samples = [Kernel(str(k["name"]), str(k["source"]),
                      frozenset(str(e) for e in k["extensions"])) for k in data["samples"]]
    return generalize(samples) if samples else None


class GenericStore(Protocol):
    """Where generic kernels outlive the process, by skeleton (runtime/generic_plans.py
    keeps them in the cache directory): what one model learned, a later process (or
    another model with the same kernels) uses without sampling again. A stored kernel is
    used only where it answers exactly, so a stale or foreign one can only go unused."""

    def load(self, skeleton: str) -> tuple[list[GenericKernel], set[str]]: ...

    def save(self, skeleton: str, kernels: list[GenericKernel], tried: set[str]) -> None: ...


class GenericKernels:
    """The generic kernels one model has found so far; `answer` maps a concrete kernel to
    one of them and its argument values. With a `store`, kernels of a skeleton seen for
    the first time are looked up there, and what is learned is written back."""

    def __init__(self, store: GenericStore | None = None) -> None:
        self._store = store
        self._loaded: set[str] = set()  # skeletons looked up in the store
        # names of kernels sampled once without a generic form, by skeleton
        self._tried: dict[str, set[str]] = {}
        self._by_skeleton: dict[str, list[GenericKernel]] = {}
        # answers by kernel name (a kernel's name is its source's hash), until the next add
        self._answers: dict[str, tuple[GenericKernel, tuple[int, ...]] | None] = {}

    def kernels(self) -> list[Kernel]:
        """Every generic kernel, in a fixed order: the one program of the model."""
        return sorted((g.kernel for found in self._by_skeleton.values() for g in found),
                      key=lambda k: k.name)

    def skeletons(self) -> list[str]:
        """The skeletons that have generic kernels, sorted: loading them all (`load`) in a
        later process starts it on the program this one ended with."""
        return sorted(s for s, found in self._by_skeleton.items() if found)

    def load(self, skeletons: Sequence[str]) -> None:
        """Look these skeletons up in the store now, not when a kernel of theirs comes."""
        for skeleton in skeletons:
            self._load(skeleton)

    def add(self, generic: GenericKernel) -> bool:
        self._load(generic.skeleton)
        found = self._by_skeleton.setdefault(generic.skeleton, [])
        if any(g.kernel.name == generic.kernel.name for g in found):
            return False
        found.append(generic)
        self._answers.clear()
        self._save(generic.skeleton)
        return True

    def give_up(self, kernel: Kernel) -> None:
        """`kernel` was sampled and has no generic form: it is not sampled again."""
        skeleton = kernel_form(kernel).skeleton
        self._load(skeleton)
        self._tried.setdefault(skeleton, set()).add(kernel.name)
        self._save(skeleton)

    def was_tried(self, kernel: Kernel) -> bool:
        skeleton = kernel_form(kernel).skeleton
        self._load(skeleton)
        return kernel.name in self._tried.get(skeleton, ())

    def _load(self, skeleton: str) -> None:
        if self._store is None or skeleton in self._loaded:
            return
        self._loaded.add(skeleton)
        kernels, tried = self._store.load(skeleton)
        found = self._by_skeleton.setdefault(skeleton, [])
        names = {g.kernel.name for g in found}
        found.extend(g for g in kernels if g.skeleton == skeleton and g.kernel.name not in names)
        self._tried.setdefault(skeleton, set()).update(tried)
        self._answers.clear()

    def _save(self, skeleton: str) -> None:
        if self._store is not None:
            self._store.save(skeleton, self._by_skeleton.get(skeleton, []),
                             self._tried.get(skeleton, set()))

    def answer(self, kernel: Kernel) -> tuple[GenericKernel, tuple[int, ...]] | None:
        """The generic kernel that runs `kernel`, and the values of its varying literals."""
        if kernel.name in self._answers:
            return self._answers[kernel.name]
        form = kernel_form(kernel)
        self._load(form.skeleton)
        found = None
        for generic in self._by_skeleton.get(form.skeleton, ()):
            values = generic.match(form)
            if values is not None:
                found = generic, values
                break
        self._answers[kernel.name] = found
        return found
