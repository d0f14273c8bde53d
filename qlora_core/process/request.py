"""What the parent tells a case's child: the request file, the run's options, the environment.

The runner writes one `ChildRequest` per run of a case (`ChildRequest.write`, JSON, atomically)
beside the case's Result file; the child (`qlora_core.process.child`), each rank of a multi-GPU case
(`qlora_core.process.rank`) and the multi-GPU launcher (`qlora_core.process.distributed`) read it back with
`ChildRequest.read`, which refuses a malformed request or one of another `REQUEST_VERSION` with
every problem named, before any work. `RunOptions` says how a case runs (not part of its
identity); `child_env` is the environment every process of a case starts with.
No torch is imported here: the parent imports this module.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlora_core.cases.case import Case, CaseError
from qlora_core.cases.gpus import first_visible_gpu, get_profile
from qlora_core.measurement.result import write_atomic
from qlora_core.models.registry import needs_hub
from qlora_core.process import faults

DEFAULT_TIMEOUT_S = 1800.0
REQUEST_VERSION = 1
"""The request file's layout (`ChildRequest.to_dict`). A request lives for one run and is read by
the code that wrote it, so a reader knows one version only and refuses any other."""


@dataclass(frozen=True)
class RunOptions:
    """How the child runs a case (not part of the case's identity)."""

    profile: str = "cpu"
    timeout_s: float = DEFAULT_TIMEOUT_S
    memory_cap_gib: float | None = None
    """Cap the caching allocator at this many GiB (overrides the profile's emulation cap)."""
    families: str = ""
    overrides: str = ""
    repeat: int = 0
    """Which fresh-process repeat of the case this run is (0-based); recorded in the Result."""
    inject_fault: str = ""
    """Tests only: a fault `KIND@STAGE` the child inflicts on itself in this run (see
    `qlora_core.process.child`); "" for none. Not part of the case's identity."""
    adaptive_steps: bool | None = None
    """Measure until the step times are steady (`engines.pacing`); None: on CUDA only, where
    the time is the point (the CPU runs stay deterministic)."""
    uncapped: bool = False
    """The memory-only rerun of a case that ran out of memory under an emulated cap
    (`qlora_core.process.oom_need`): no allocator cap (the row says memory_cap_gib=None, emulated=False),
    `engines.pacing.MEMORY_ONLY_STEPS` fixed steps and no profiler window."""
    shared_device: int = 1
    """How many cases run on the device at once with this one (`qlora_core.process.side_by_side`); above 1
    its speed is not measured (None: other processes share the device), and its device memory is
    NVML's per-process line for its own process (`measure.NVML_PROCESS`)."""
    lane_share_gib: float | None = None
    """Side by side on a real card of the profile (`qlora_core.process.lanes`): this run's share of the
    device, GiB with its CUDA context; the child caps its allocator at the share less its measured
    context (`Result.hardware.lane_cap_gib`). Not the profile's cap (`memory_cap_gib` stays None): an OOM
    under it is the suite's, and the case reruns alone. None: no lane cap."""

    def check(self) -> None:
        """Raise a CaseError on options the child could not honour, naming the allowed values."""
        profile = get_profile(self.profile)
        if type(self.repeat) is not int or self.repeat < 0:
            raise CaseError([f"repeat={self.repeat!r} must be an integer >= 0 (0-based repeat index)"])
        if type(self.shared_device) is not int or self.shared_device < 1:
            raise CaseError([f"shared_device={self.shared_device!r} must be an integer >= 1 (1: alone)"])
        share = self.lane_share_gib
        if share is not None and (type(share) not in (int, float) or not share > 0):
            raise CaseError([f"lane_share_gib={share!r} must be a number of GiB > 0 (None: no lane cap)"])
        fault = faults.parse_fault(self.inject_fault)
        if fault is not None and fault.kind in faults.CUDA_ONLY_KINDS and not profile.is_gpu:
            raise CaseError([f"fault {fault} needs a GPU profile; profile {profile.name!r} runs on the CPU"])


RUN_OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RunOptions))


class RequestError(ValueError):
    """A request file a child cannot run: unreadable, malformed, or of another version."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.problems = problems
        super().__init__(f"request {path} cannot be run:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class ChildRequest:
    """One run of a case, as the parent hands it to the case's processes."""

    case: Case
    options: RunOptions
    result_path: Path
    """Where the child writes its Result (a rank: `distributed.rank_result_path` of it)."""
    parent_pid: int
    """The runner's pid: the child dies with it (`lifecycle.die_with_parent`)."""
    spawned_at: float | None = None
    """Wall clock (`time.time()`, comparable across processes) when the parent wrote the request:
    the child's `start_s` counts from here. None: not said."""

    @property
    def path(self) -> Path:
        """Where the runner writes this request: beside the Result file."""
        return self.result_path.with_name(self.result_path.name + ".request")

    @property
    def log_path(self) -> Path:
        """The case's log: its processes' output."""
        return self.result_path.with_suffix(".log")

    def fault(self, rank: int = 0) -> str:
        """The fault (`KIND@STAGE`, or "") process `rank` fires: the run's one-shot fault wins over
        the case's own (a test sets one or the other); a rank selector may name another rank."""
        return faults.for_rank(
            self.options.inject_fault or dict(self.case.extra).get(faults.FAULT_KEY, ""), rank
        )

    def env(self) -> dict[str, str]:
        """The environment the case's first process starts with (`child_env`)."""
        return child_env(self.case.num_gpus, hub_model=needs_hub(self.case.model))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": REQUEST_VERSION,
            "case": self.case.to_dict(),
            "options": dataclasses.asdict(self.options),
            "result": str(self.result_path),
            "parent_pid": self.parent_pid,
            "spawned_at": self.spawned_at,
        }

    def write(self, path: Path) -> None:
        """Write the request to `path` as JSON, atomically (a reader sees all of it or none)."""
        write_atomic(path, json.dumps(self.to_dict()))

    @classmethod
    def read(cls, path: Path) -> ChildRequest:
        """The request at `path`; a RequestError naming every problem when it cannot be run."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise RequestError(path, [f"unreadable: {exc}"]) from exc
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: Any, source: Path | str = "<dict>") -> ChildRequest:
        """Inverse of `to_dict`; a RequestError naming every problem (with `source`, its file)."""
        if not isinstance(data, dict):
            raise RequestError(source, [f"must be a JSON object, got {type(data).__name__}"])
        problems = _key_problems(data)
        if "version" in data and data["version"] != REQUEST_VERSION:
            problems.append(f"version {data['version']!r}: this code reads version {REQUEST_VERSION} only")
        if problems:
            raise RequestError(source, problems)
        case, options = _case(data["case"], problems), _options(data["options"], problems)
        if not isinstance(data["result"], str) or not data["result"]:
            problems.append(f"result={data['result']!r} must be a non-empty path")
        if type(data["parent_pid"]) is not int or data["parent_pid"] < 1:
            problems.append(f"parent_pid={data['parent_pid']!r} must be a process id (an integer >= 1)")
        spawned_at = data["spawned_at"]
        if spawned_at is not None and type(spawned_at) not in (int, float):
            problems.append(f"spawned_at={spawned_at!r} must be a wall-clock time in seconds or null")
        if problems or case is None or options is None:
            raise RequestError(source, problems)
        return cls(case, options, Path(data["result"]), data["parent_pid"], spawned_at)


_REQUEST_KEYS: tuple[str, ...] = ("version", "case", "options", "result", "parent_pid", "spawned_at")


def _key_problems(data: dict[str, Any]) -> list[str]:
    missing = [k for k in _REQUEST_KEYS if k not in data]
    unknown = sorted(set(data) - set(_REQUEST_KEYS))
    problems = []
    if missing:
        problems.append(f"missing key(s) {missing}")
    if unknown:
        problems.append(f"unknown key(s) {unknown}")
    if problems:
        problems.append(f"a request has exactly the keys {list(_REQUEST_KEYS)}")
    return problems


def _case(data: Any, problems: list[str]) -> Case | None:
    if not isinstance(data, dict):
        problems.append(f"case must be an object of Case fields, got {type(data).__name__}")
        return None
    try:
        return Case.from_dict(data)
    except (CaseError, TypeError) as exc:
        problems.append(f"case: {exc}")
        return None


def _options(data: Any, problems: list[str]) -> RunOptions | None:
    if not isinstance(data, dict):
        problems.append(f"options must be an object of RunOptions fields, got {type(data).__name__}")
        return None
    unknown = sorted(set(data) - set(RUN_OPTION_NAMES))
    if unknown:
        problems.append(f"options: unknown field(s) {unknown}; known fields: {list(RUN_OPTION_NAMES)}")
        return None
    return RunOptions(**data)


# -- the environment of a case's processes -------------------------------------------------------

OFFLINE_ENV = "HF_HUB_OFFLINE"
"""huggingface_hub's offline switch, on in every child whose model is local: bitsandbytes (0.50)
asks the `kernels` package for a CPU kernel from the hub (`kernels-community`) when imported on a
CPU with AVX512-BF16, and `kernels` resolves it from the local cache alone (no publisher check,
no download) when this is on. None is cached, so bitsandbytes keeps its built-in CPU kernel, as
it did when the hub was unreachable; CUDA kernels are not affected."""
_OFFLINE_KERNEL_LOGGERS = ("kernels._internals.hf_hub", "bitsandbytes.backends.cpu.ops")


class _OfflineKernelNotice(logging.Filter):
    """Drops what the two libraries log, in every child process, about the hub kernel that
    `OFFLINE_ENV` keeps out: its publisher check skipped, the kernel not in the local cache. An
    online attempt's lines (a failed publisher check, a download error) are kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("kernels-community" in message and "offline mode" in message)


def quiet_offline_kernel_notices() -> None:
    """Install `_OfflineKernelNotice` (a case's process, before it imports bitsandbytes); once."""
    for name in _OFFLINE_KERNEL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OfflineKernelNotice) for f in logger.filters):
            logger.addFilter(_OfflineKernelNotice())


def child_env(num_gpus: int = 1, hub_model: bool = False) -> dict[str, str]:
    """The parent's environment, with the libraries' progress bars off (the log stays readable).

    No network: `OFFLINE_ENV` is on (unless the parent set it) except for a case whose model is a
    hub id (`registry.needs_hub`, `hub_model=True`): that child fetches the model, and says so
    clearly where the hub is unreachable (`resolve._resolve_hub`).

    A one-GPU case sees one GPU: the first the parent sees (`gpus.first_visible_gpu`). Shown
    several, transformers' `TrainingArguments` sets `n_gpu` to all of them and `Trainer` trains
    n_gpu x `per_device_train_batch_size` rows a step (a 4-bit model on one GPU; a 16-bit one
    under DataParallel on all): a one-GPU row measured so is another case's. A multi-GPU case
    (`accelerate launch`) is given every GPU the parent sees.

    Without pytest's PYTEST_CURRENT_TEST: pytest rewrites it at every phase of every test, so a
    warm spare started during one case's test would differ from the environment at the next
    case's hand-over and be discarded, every time (`spare.SparePool.take`); no child reads it.
    """
    env = dict(os.environ)
    env.pop("PYTEST_CURRENT_TEST", None)
    if num_gpus == 1:
        env["CUDA_VISIBLE_DEVICES"] = first_visible_gpu()
    if not hub_model:
        env.setdefault(OFFLINE_ENV, "1")
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env.setdefault("TQDM_DISABLE", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env
