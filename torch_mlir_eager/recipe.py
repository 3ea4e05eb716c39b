"""What to build, and what a build gives back: plain data that crosses process boundaries.

A `Recipe` describes one kernel: the op (by name), the argument template (each tensor input a
`Slot`, each runtime scalar a `ScalarSlot`), the tensor inputs' specs and the target flags.
The compile workers turn it into a `Built`: the kernel binary, the `OutputPlan` (how its
results become the op's results) and the inputs it must be given as copies. Nothing here imports
the compiler stack, so the user's process can load known kernels without it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch

from .layout import contiguous_strides, physical_order


class StepError(Exception):
    """A failure at one step of building a kernel. `step` names it for the statistics."""

    def __init__(self, step: str, message: str):
        super().__init__(message)
        self.step = step
        self.message = message

    @property
    def first_line(self) -> str:
        return first_line(self.message)


def first_line(message: str) -> str:
    for line in str(message).splitlines():
        line = line.strip()
        if line:
            return line[:300]
    return "(no message)"


# ---- ops by name --------------------------------------------------------------------------------
def op_name(func) -> str:
    """`aten.add.Tensor` for torch.ops.aten.add.Tensor."""
    return str(func)


@functools.lru_cache(maxsize=None)
def resolve_op(name: str):
    """The OpOverload named `name` (`aten.add.Tensor`, `aten.relu.default`)."""
    namespace, rest = name.split(".", 1)
    packet, overload = rest.rsplit(".", 1)
    return getattr(getattr(getattr(torch.ops, namespace), packet), overload)


# ---- tensor inputs and outputs --------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    """What a kernel needs to know about one tensor input: logical shape, strides and dtype.
    The kernel takes it as a dense buffer in its physical order (`perm`, see layout.py)."""

    shape: tuple
    stride: tuple
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def perm(self):
        return physical_order(self.shape, self.stride)[0]

    @property
    def physical_shape(self) -> tuple:
        perm = self.perm
        return self.shape if perm is None else tuple(self.shape[d] for d in perm)


@dataclass
class OutputSpec:
    """One tensor result: its metadata as PyTorch gives it, and the physical order the kernel
    writes it in (`perm`: the result is `out.permute(perm).contiguous()`), so that its strides
    match PyTorch's without a copy."""

    shape: tuple
    stride: tuple
    dtype: torch.dtype
    perm: tuple | None  # None: the kernel writes it in logical (row-major) order

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def output_spec(t: torch.Tensor) -> OutputSpec:
    """The kernel writes a result in its physical order when its strides are dense (row-major,
    channels_last, any permutation), so its strides match PyTorch's; any other result (gaps,
    overlaps) gets the same values with contiguous strides."""
    shape, stride = tuple(t.shape), tuple(t.stride())
    perm, dense = physical_order(shape, stride)
    if not dense:
        return OutputSpec(shape, contiguous_strides(shape), t.dtype, None)
    return OutputSpec(shape, stride, t.dtype, perm)


@dataclass
class OutputPlan:
    """How the kernel's results become the op's results."""

    leaves: list  # per returned leaf: ("out", i) | ("arg", slot) | ("const", value)
    tree: object  # pytree spec of the op's return value
    out_specs: list  # OutputSpec of each fresh result
    writes: list = field(default_factory=list)  # slot of each written input
    write_shapes: list = field(default_factory=list)  # the shape each has after the op (out= may resize)
    live_inputs: list = field(default_factory=list)  # inputs passed to the kernel (not zero-size)
    live_outputs: list = field(default_factory=list)  # fresh results the kernel returns (not zero-size)
    live_writes: list = field(default_factory=list)  # writes the kernel returns, after live_outputs
    live_write_shapes: list = field(default_factory=list)  # their shapes (out= may resize)
    input_shapes: list = field(default_factory=list)  # shapes of the tensor inputs (for device.work_of)
    # (kernel input, tile) of a weight the kernel takes pre-packed (prepack.py), else None
    packed: tuple | None = None

    @functools.cached_property
    def single_fresh(self) -> bool:
        return self.leaves == [("out", 0)] and self.tree.num_leaves == 1 and self.tree.is_leaf()

    @functools.cached_property
    def uint8_out(self) -> bool:
        import torch

        return any(spec.dtype is torch.uint8 for spec in self.out_specs)

    @property
    def num_outputs(self):
        return len(self.live_outputs) + len(self.live_writes)

    def __getstate__(self):  # the cached properties are not part of the data
        state = dict(self.__dict__)
        state.pop("single_fresh", None)
        state.pop("uint8_out", None)
        return state


# ---- argument templates -------------------------------------------------------------------------
class Slot:
    """Stands for the i-th tensor input inside an argument template."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __repr__(self):
        return f"Slot({self.index})"

    def __getstate__(self):
        return self.index

    def __setstate__(self, index):
        self.index = index


class ScalarSlot:
    """Stands for the i-th runtime scalar (a Python float or int passed to the kernel as an
    argument, not baked into it) inside an argument template."""

    __slots__ = ("index", "type")

    def __init__(self, index: int, type_: type):
        self.index, self.type = index, type_

    def __repr__(self):
        return f"ScalarSlot({self.index}, {self.type.__name__})"

    def __getstate__(self):
        return self.index, self.type

    def __setstate__(self, state):
        self.index, self.type = state


def fill(template, values, scalars=()):
    """Replace every Slot in a nested args/kwargs template by values[slot.index], and every
    ScalarSlot by scalars[slot.index]."""
    if isinstance(template, Slot):
        return values[template.index]
    if isinstance(template, ScalarSlot):
        return scalars[template.index]
    if isinstance(template, (list, tuple)):
        return type(template)(fill(t, values, scalars) for t in template)
    if isinstance(template, dict):
        return {k: fill(v, values, scalars) for k, v in template.items()}
    return template


def scalar_slots(template) -> list:
    """The template's ScalarSlots, by index."""
    found = {}

    def visit(x):
        if isinstance(x, ScalarSlot):
            found[x.index] = x
        elif isinstance(x, (list, tuple)):
            for v in x:
                visit(v)
        elif isinstance(x, dict):
            for v in x.values():
                visit(v)

    visit(template)
    return [found[i] for i in sorted(found)]


def loads(data: bytes):
    """Unpickle a recipe, plan or Built (pytree specs warn about an old spelling on the way)."""
    import pickle
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return pickle.loads(data)


# ---- the recipe and the built kernel ------------------------------------------------------------
@dataclass
class Recipe:
    """Everything needed to build one kernel. `func` is an aten OpOverload, or plain data that
    is callable (layout.LayoutOp, bounds.BoundsProbe); it crosses processes by name."""

    name: str
    func: object
    template: tuple  # (args, kwargs) with a Slot for each tensor input, a ScalarSlot per runtime scalar
    specs: list  # TensorSpec of each tensor input, with the real strides
    driver: str
    flags: tuple  # the compiler's target flags for the driver
    key: object = None  # the dispatch key it serves (None for kernels of no key)
    flat: bool = False  # a shape-generic pointwise kernel over 1-D inputs of any length (flat.py)

    def __getstate__(self):
        state = dict(self.__dict__)
        if isinstance(self.func, torch._ops.OpOverload):
            state["func"] = ("op", op_name(self.func))
        state["key"] = None  # keys hold OpOverloads; the worker does not need them
        return state

    def __setstate__(self, state):
        func = state["func"]
        if isinstance(func, tuple) and len(func) == 2 and func[0] == "op":
            state["func"] = resolve_op(func[1])
        self.__dict__.update(state)


@dataclass
class Built:
    """A built kernel: the .vmfb, how its results map back, and which of its inputs it must be
    given as copies (the compiled code may update them in place, iree-org/iree#16168).
    `runtime_scalars`: False when the op's scalars had to be baked in (see compiler.py)."""

    vmfb: bytes
    plan: OutputPlan
    copy_inputs: tuple = ()
    runtime_scalars: bool = True
    from_disk: bool = False  # the binary came from the disk cache (its module was known)
    entry: str | None = None  # its disk cache entry, when the compile step stored it there
    probed: bool = False  # copy_inputs includes what a first call found (kernel.Kernel._first_call)
    seconds: float = 0.0
