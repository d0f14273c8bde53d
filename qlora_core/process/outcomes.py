"""How an exception raised while running a case becomes the case's outcome (a `Status`): a
recognised library refusal (`RECOGNISED_REFUSALS`) is `unsupported`, anything unrecognised is
`crashed`. See docs/design.md#statuses for what each status means to a reader and to `--resume`.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

from qlora_core.cases.case import CaseError
from qlora_core.cases.gpus import UnknownProfileError
from qlora_core.measurement.result import Status
from qlora_core.models import ModelUnavailableError

# Messages of CUDA failures that leave the context unusable (only a new process recovers).
_CUDA_ERROR_MARKERS = ("CUDA error", "device-side assert", "illegal memory access", "cuBLAS error")
# The CPU allocator's refusal (torch raises RuntimeError there, not OutOfMemoryError).
_CPU_OOM_MARKER = "DefaultCPUAllocator: can't allocate memory"


@dataclass(frozen=True)
class Refusal:
    """A library's refusal of a case that we recognise: its exception types and message."""

    name: str
    library: str
    types: tuple[type[BaseException], ...]
    pattern: re.Pattern[str]
    why: str
    """What the refusal means, for the row's reason."""

    def matches(self, exc: BaseException) -> bool:
        return isinstance(exc, self.types) and self.pattern.search(str(exc)) is not None


GRAD_SCALER_BF16 = "torch-grad-scaler-bf16"

RECOGNISED_REFUSALS: tuple[Refusal, ...] = (
    # The fp16 gradient scaler's unscale on CUDA dispatches float, double and half only, so bf16
    # gradients under fp16 mixed precision are refused: `"_amp_foreach_non_finite_check_and_unscale_cuda"
    # not implemented for 'BFloat16'`. Before the dtype rule below, which would also match it. (The
    # engine that cast the parameters to bf16 adds its cast to the message: `engines.hf`.)
    Refusal(
        GRAD_SCALER_BF16,
        "torch",
        (NotImplementedError, RuntimeError),
        re.compile(r"\"_amp_foreach_non_finite_check_and_unscale_\w+\" not implemented for 'BFloat16'"),
        "fp16's gradient scaler cannot unscale bf16 gradients (bf16 trainable parameters under fp16)",
    ),
    # ATen's dtype dispatch: the op exists on this device but has no kernel for the dtype, e.g.
    # `"cholesky_cpu" not implemented for 'Half'` (NotImplementedError in torch 2.13, a
    # RuntimeError in older releases).
    Refusal(
        "torch-dtype-kernel",
        "torch",
        (NotImplementedError, RuntimeError),
        re.compile(r"\"\w+\" not implemented for '\w+'"),
        "torch has no kernel for this dtype on this device",
    ),
    # The dispatcher: no kernel of the op is registered for this backend, e.g.
    # `Could not run 'aten::cudnn_convolution' with arguments from the 'CPU' backend`.
    Refusal(
        "torch-backend-kernel",
        "torch",
        (NotImplementedError,),
        re.compile(r"Could not run '[\w:.]+' with arguments from the '\w+' backend"),
        "torch has no kernel of this operator for this device",
    ),
    # torch.linalg refuses fp16/bf16 inputs outright: `linalg.inv: Low precision dtypes not
    # supported. Got Half`.
    Refusal(
        "torch-low-precision",
        "torch",
        (RuntimeError,),
        re.compile(r"Low precision dtypes not supported"),
        "torch refuses this operation in a 16-bit dtype",
    ),
    # bitsandbytes' blockwise quantization takes 16/32-bit floats only: `Blockwise 4bit
    # quantization only supports 16/32-bit floats, but got torch.int32`.
    Refusal(
        "bitsandbytes-blockwise-dtype",
        "bitsandbytes",
        (ValueError,),
        re.compile(r"Blockwise (?:\w+ )?quantization only supports 16/32-bit floats"),
        "bitsandbytes cannot quantize this dtype",
    ),
)


def recognised_refusal(exc: BaseException) -> Refusal | None:
    """The refusal `exc` is, or None when it is not one we recognise."""
    return next((r for r in RECOGNISED_REFUSALS if r.matches(exc)), None)


def _is_torch_instance(exc: BaseException, name: str) -> bool:
    # torch is loaded wherever a torch exception can exist; never import it just to classify.
    torch = sys.modules.get("torch")
    kind = getattr(torch, name, None) if torch is not None else None
    return kind is not None and isinstance(exc, kind)


def classify_exception(exc: BaseException) -> Status:
    """Map an exception raised while running a case to its outcome (see the module docstring)."""
    if isinstance(exc, (CaseError, UnknownProfileError)):
        return Status.CONFIG_ERROR
    if isinstance(exc, ModelUnavailableError):
        return Status.MISSING_MODEL
    text = f"{type(exc).__name__}: {exc}"
    if _is_torch_instance(exc, "OutOfMemoryError") or _CPU_OOM_MARKER in text:
        return Status.OOM
    # CUDA's own allocation failure inside a kernel launch reads "CUDA error: out of memory".
    if isinstance(exc, RuntimeError) and "out of memory" in text.lower():
        return Status.OOM
    if _is_torch_instance(exc, "AcceleratorError") or any(m in text for m in _CUDA_ERROR_MARKERS):
        return Status.CUDA_ERROR
    if recognised_refusal(exc) is not None:
        return Status.UNSUPPORTED
    return Status.CRASHED
