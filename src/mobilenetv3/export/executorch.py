"""ExecuTorch: a ``.pte`` program lowered to the XNNPACK delegate (fp32, or INT8 by PT2E quantisation with
XNNPACK's quantizer), and ``ExecuTorchModule``, a ``.pte`` run by ExecuTorch's runtime where a model is expected.

The program is ``torch.export`` -> ``to_edge_transform_and_lower`` with the ``XnnpackPartitioner``, and every
operator of the network runs in XNNPACK (``delegation`` counts them). Two steps make that so. The flatten before
the head, a reshape to ``[batch, C]`` with a symbolic batch, is rewritten to ``[-1, C]``: XNNPACK takes one
inferred dimension but no symbolic one, and without it the graph splits in two around a reshape in ExecuTorch's
portable runtime. And the scalar constants of hard-sigmoid's decomposition, whose dtype casts would run in the
portable runtime (18 of them in a Small), are folded into constants.

The batch is dynamic, 1 to ``MAX_BATCH``: ExecuTorch plans its input and output buffers for the largest batch
and allocates them when the program loads (64 x 3 x 224 x 224 floats: 38 MB), so ``ExecuTorchModule`` runs a
larger batch in slices of ``max_batch`` images.

A ``.pte`` has no metadata slot, but a program can carry constant methods, which return a value without running
the network: the model card (``describe``) is the JSON string that the method ``METADATA_KEY`` returns, INT8's
recipe is ``INT8_KEY``'s and its calibration images ``CALIBRATION_KEY``'s. No sidecar file, so a copied
``.pte`` keeps its card.

ExecuTorch is an extra (``pip install 'mobilenetv3[executorch]'``): without it every entry point here is one line.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import re
from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import nn

from ..errors import UsageError
from ..files import atomic_output
from .common import CALIBRATION_KEY, INT8_KEY, METADATA_KEY, WithSoftmax, describe

EXTRA_MISSING = "ExecuTorch needs the executorch extra: pip install 'mobilenetv3[executorch]'"
MAX_BATCH = 64  # the largest batch one call of the program takes; its buffers are planned for it
INT8_RECIPE = dict(quantizer="XNNPACKQuantizer", weights="int8, symmetric, per output channel",
                   activations="int8, symmetric, per tensor, static (calibrated)")
_IDENTIFIER = re.compile(rb"ET[0-9]{2}")  # a .pte's FlatBuffer file identifier (bytes 4-8), "ET12" in 1.x
_BOOKKEEPING = ("getitem",)  # picks a delegate's outputs apart: counted by ExecuTorch, computes nothing


def import_executorch():
    """The ``executorch`` package, or the one line that says which extra installs it. Only the package: its
    compiler and runtime (``executorch.exir``, ``executorch.runtime``) take seconds to import, and a
    file that is no program is refused before they are."""
    try:
        import executorch
    except ImportError:
        raise UsageError(EXTRA_MISSING) from None
    return executorch


@contextlib.contextmanager
def _quiet_imports():
    """torchao's note on import kept off the terminal: it registers an Enum with torch's pytree, which torch 2.14
    deprecates ("<enum 'KernelPreference'> is an Enum subclass and is now natively supported ..."), once per
    process. ExecuTorch's compiler and runtime both import torchao. And the root logger as it was: XNNPACK's
    partitioner calls ``logging.basicConfig`` as it is imported, which gave the root logger a handler of its own,
    so every later line of ours came twice (once as ``INFO:mobilenetv3...``) and other libraries' warnings
    reached the terminal."""
    pytree_log, root = logging.getLogger("torch.utils._pytree"), logging.getLogger()
    level, root_handlers, root_level = pytree_log.level, list(root.handlers), root.level
    pytree_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        pytree_log.setLevel(level)
        for handler in [h for h in root.handlers if h not in root_handlers]:
            root.removeHandler(handler)
        root.setLevel(root_level)


# ------------------------------------------------------------------------------------------ export
def export_executorch(model: nn.Module, path: Path, example: torch.Tensor, softmax: bool = False,
                      calibration: Optional[Iterable[torch.Tensor]] = None,
                      calibration_info: Optional[dict] = None) -> dict:
    """A ``.pte`` lowered to XNNPACK with a dynamic batch of 1 to ``MAX_BATCH`` (input (N, C, H, W) as
    ``example``'s C, H, W; output logits, or probabilities with ``softmax``). fp32, or with ``calibration``
    (batches of images) INT8: PT2E quantisation with XNNPACK's quantizer (symmetric int8, weights per
    output channel, activations per tensor with ranges calibrated on every image), ``calibration_info`` (what
    the images are) recorded in the file. Returns ``delegation``'s count of where the operators run."""
    import_executorch()
    with _quiet_imports():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    _check_pte(path)
    net = (WithSoftmax(model) if softmax else model).eval()
    shapes = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)
    if example.shape[0] == 1:  # torch.export specialises a dimension traced at size 1: trace at 2
        example = example.expand(2, *example.shape[1:]).contiguous()
    program = torch.export.export(net, (example,), dynamic_shapes=shapes)
    methods = {METADATA_KEY: json.dumps(describe(model, softmax))}
    if calibration is not None:
        quantized = _quantize(program.module(), calibration)
        program = torch.export.export(quantized, (example,), dynamic_shapes=shapes)
        methods[INT8_KEY] = json.dumps(dict(INT8_RECIPE, tool=_torchao_version()))
        if calibration_info is not None:
            methods[CALIBRATION_KEY] = json.dumps(calibration_info)
    edge = to_edge_transform_and_lower(program, transform_passes=[_inferred_batch_reshape],
                                       partitioner=[XnnpackPartitioner()], constant_methods=methods)
    _fold_constants(edge)
    _plan_for_declared_batch(edge.exported_program())
    counts = delegation(edge.exported_program())
    executorch_program = edge.to_executorch()
    with atomic_output(path) as tmp:
        tmp.write_bytes(executorch_program.buffer)
    return counts


def _check_pte(path: Path) -> None:
    if Path(path).suffix != ".pte":
        raise UsageError(f"an ExecuTorch program is a .pte file: {path} does not end in .pte")


def _quantize(module: nn.Module, calibration: Iterable[torch.Tensor]) -> nn.Module:
    """``module`` (a ``torch.export`` graph) with int8 quantise/dequantise pairs where XNNPACK's quantizer puts
    them, activation ranges observed on every calibration image (in slices the exported batch range takes)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(module, quantizer)
    seen = 0
    with torch.no_grad():
        for batch in calibration:
            for part in batch.split(MAX_BATCH):
                prepared(part)
                seen += len(part)
    if not seen:
        raise UsageError("INT8 needs at least one calibration image")
    return convert_pt2e(prepared)


def _torchao_version() -> str:
    import torchao

    return f"torchao {torchao.__version__} (PT2E)"


def _inferred_batch_reshape(graph_module: torch.fx.GraphModule):
    """Reshapes to a shape with one symbolic size (the flatten's ``[batch, C]``) written with ``-1`` there, the
    same reshape: XNNPACK lowers an inferred dimension but not a symbolic one. A transform pass of
    ``to_edge_transform_and_lower``, run before partitioning."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from executorch.exir.pass_base import PassResult

    changed = False
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or node.target != exir_ops.edge.aten.view_copy.default:
            continue
        size = list(node.args[1])
        symbolic = [i for i, s in enumerate(size) if not isinstance(s, int)]
        if len(symbolic) == 1 and -1 not in size:
            size[symbolic[0]] = -1
            node.args = (node.args[0], size)
            changed = True
    if changed:
        graph_module.graph.eliminate_dead_code()  # the sym_size that computed the batch
        graph_module.recompile()
    return PassResult(graph_module, changed)


def _fold_constants(edge) -> None:
    """Constant subexpressions left outside the delegate (the dtype casts of hard-sigmoid's scalar constants)
    computed now, at export, instead of by the portable runtime on every run (the pass changes the program in
    place)."""
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    for method in edge.methods:
        constant_prop_pass(edge.exported_program(method))


def _plan_for_declared_batch(program) -> None:
    """Let ExecuTorch plan its buffers for the batch range declared at export, 1 to ``MAX_BATCH``.

    While lowering, ExecuTorch re-runs the graph on fake tensors, and torch's fake convolution asks of the batch
    whether it is at least 16 (a CPU backend heuristic), which, answered for the example's batch of 2, narrows
    the shape environment to ``batch <= 15``; the memory planner takes that as the largest batch. The program's
    ``range_constraints`` still hold the declared range. XNNPACK resizes its graph to each call's batch (the
    export check runs batches of up to ``MAX_BATCH``). Where the shape environment cannot be reached the
    narrower plan stands, and ``ExecuTorchModule`` reads the planned size from the program either way."""
    user_input = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == user_input)
    batch = node.meta["val"].shape[0]
    shape_env = getattr(getattr(batch, "node", None), "shape_env", None)
    ranges = getattr(shape_env, "var_to_range", None)
    if not isinstance(ranges, dict):
        return
    for symbol, declared in program.range_constraints.items():
        if symbol in ranges:
            ranges[symbol] = declared


def delegation(program) -> dict:
    """Where the operators of a lowered program run: ``xnnpack`` (inside XNNPACK delegates, ``subgraphs`` of
    them) and ``portable`` (ExecuTorch's portable runtime), and each by kind (``xnnpack_ops``, ``portable_ops``:
    ``{"aten_convolution_default": 52, ...}``), from ExecuTorch's ``get_delegation_info``; ``getitem`` (which
    takes a delegate's outputs apart) is not counted."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(program.graph_module)
    counts = dict(xnnpack_ops={}, portable_ops={})
    for op, stats in sorted(info.delegation_by_operator.items()):
        for where, count in (("xnnpack_ops", stats.delegated), ("portable_ops", stats.non_delegated)):
            if count and op not in _BOOKKEEPING:
                counts[where][op] = count
    return dict(xnnpack=sum(counts["xnnpack_ops"].values()), portable=sum(counts["portable_ops"].values()),
                subgraphs=info.num_delegated_subgraphs, **counts)


# ------------------------------------------------------------------------------------------ running
@contextlib.contextmanager
def _runtime_log():
    """ExecuTorch's runtime writes its log lines through Python's ``sys.stderr``: held here while it loads, so
    that the CPU probing it reports on every first load ("[cpuinfo_utils.cpp:71] Reading file ...") stays off
    the terminal and a failure can name its reason (the last line)."""
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        yield log


def _reason(log: io.StringIO, err: Exception) -> str:
    """The runtime's last log line without its source location (``[program.cpp:114] File size is too small``),
    or the exception's text."""
    lines = [line.strip() for line in log.getvalue().splitlines() if line.strip()]
    text = re.sub(r"^\[[\w.]+:\d+\]\s*", "", lines[-1]) if lines else str(err)
    return " ".join(text.split())[:200]


def _load_program(path: Path):
    """The runtime's ``Program`` of the ``.pte`` at ``path``; a file that is not one is a ``UsageError``. The file
    identifier is checked first: the runtime logs the identifier it found, and bytes that are not text there
    (any random file) end the process (pybind11 cannot decode the line and calls ``std::terminate``)."""
    import_executorch()
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with path.open("rb") as file:
        head = file.read(8)
    if not _IDENTIFIER.fullmatch(head[4:8]):
        raise UsageError(f"{path}: not an ExecuTorch program (no ETnn file identifier at byte 4)")
    with _quiet_imports():
        from executorch.runtime import Runtime
    with _runtime_log() as log:
        try:
            return Runtime.get().load_program(path)
        except RuntimeError as err:
            raise UsageError(f"{path}: not a loadable ExecuTorch program ({_reason(log, err)})") from None


def _constant(program, name: str) -> Optional[dict]:
    """The JSON a constant method of ``program`` returns (the card, INT8's recipe), or None without it."""
    if name not in program.method_names:
        return None
    with _runtime_log():
        return json.loads(program.load_method(name).execute([])[0])


class ExecuTorchModule(nn.Module):
    """A ``.pte`` program run by ExecuTorch's runtime on the CPU (XNNPACK), usable where a model is expected
    (``engine.evaluate``, predict). One call of the program takes 1 to ``max_batch`` images (what its buffers
    were planned for, ``MAX_BATCH`` for our exports); a larger batch runs in slices of ``max_batch`` and the
    outputs are concatenated. The image size is the exported one."""

    runtime = "executorch"

    def __init__(self, path):
        super().__init__()
        self.path = Path(path)
        self.program = _load_program(self.path)
        with _runtime_log() as log:
            try:
                self.method = self.program.load_method("forward")
            except RuntimeError as err:
                raise UsageError(f"{self.path}: ExecuTorch cannot load its forward method "
                                 f"({_reason(log, err)})") from None
        meta = self.method.metadata
        self.input_shape = tuple(meta.input_tensor_meta(0).sizes())  # (max_batch, C, H, W)
        self.max_batch, self.in_chans = self.input_shape[0], self.input_shape[1]
        self.num_classes = meta.output_tensor_meta(0).sizes()[1]
        info = _constant(self.program, METADATA_KEY) or {}
        self.classes, self.preprocessing = info.get("classes"), info.get("preprocessing")
        self.model_name, self.model_kwargs = info.get("model_name", self.path.stem), info.get("model_kwargs", {})
        self.softmax = bool(info.get("softmax", False))
        self.dataset = info.get("dataset")  # the data it was trained on (None: not recorded)
        self.int8 = _constant(self.program, INT8_KEY)  # how it was quantised; None for fp32
        self.calibration = _constant(self.program, CALIBRATION_KEY)
        self.quantized = self.int8 is not None
        self.precision = "int8" if self.quantized else "fp32"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape[1:]:
            raise UsageError(f"{self.path} takes (N, {', '.join(map(str, self.input_shape[1:]))}) images, "
                             f"not {tuple(x.shape)}")
        x = x.detach().float().contiguous().cpu()
        return torch.cat([self.method.execute((part,))[0] for part in x.split(self.max_batch)])
