"""data: seeded synthetic batches, the Python-docs corpus, byte tokenizer, train/held-out split."""

from __future__ import annotations

from pydoc_data.topics import topics

import pytest
import torch

from qlora_core.cases.case import CaseError
from qlora_core.engines.data import (
    ByteTokenizer,
    corpus_text,
    heldout_windows,
    split_train_heldout,
    synthetic_batches,
    text_batches,
    tokenize_corpus,
)


# -- synthetic -----------------------------------------------------------------------------------
def test_synthetic_batches_shape_dtype_range() -> None:
    batches = synthetic_batches(vocab_size=1024, batch_size=3, seq_len=17, count=4, seed=0)
    assert len(batches) == 4
    for batch in batches:
        assert batch.shape == (3, 17) and batch.dtype == torch.long
        assert int(batch.min()) >= 0 and int(batch.max()) < 1024


def test_synthetic_batches_are_seeded() -> None:
    a = synthetic_batches(1024, 2, 64, 3, seed=7)
    b = synthetic_batches(1024, 2, 64, 3, seed=7)
    c = synthetic_batches(1024, 2, 64, 3, seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[1])  # successive batches differ too


def test_synthetic_batches_ignore_global_rng() -> None:
    torch.manual_seed(1)
    a = synthetic_batches(50, 1, 8, 1, seed=3)
    torch.manual_seed(2)
    b = synthetic_batches(50, 1, 8, 1, seed=3)
    assert torch.equal(a[0], b[0])


def test_synthetic_batches_known_values() -> None:
    # Pinned values: a change here means runs stop being comparable with older results.
    batch = synthetic_batches(vocab_size=100, batch_size=1, seq_len=6, count=1, seed=0)[0]
    assert batch.tolist() == [[44, 39, 33, 60, 63, 79]]


@pytest.mark.parametrize(
    "kwargs", [{"vocab_size": 0}, {"batch_size": 0}, {"seq_len": -1}, {"count": 0}, {"batch_size": 1.5}]
)
def test_synthetic_batches_reject_bad_sizes(kwargs: dict) -> None:
    args = {"vocab_size": 10, "batch_size": 1, "seq_len": 4, "count": 1, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        synthetic_batches(**args)


# -- corpus and byte tokenizer -------------------------------------------------------------------
def test_corpus_text_is_python_docs_in_sorted_order() -> None:
    text = corpus_text()
    keys = sorted(topics)
    assert text.startswith(topics[keys[0]])
    assert text.endswith(topics[keys[-1]])
    assert len(text) > 100_000
    assert corpus_text() == text


def test_byte_tokenizer_round_trip() -> None:
    tokenizer = ByteTokenizer()
    text = "def f(x):\n    return x  # héllo wörld — ∑ 🐍\n"
    ids = tokenizer.encode(text)
    assert len(ids) == len(text.encode("utf-8"))
    assert all(3 <= i < 259 for i in ids)
    assert bytes(i - tokenizer.num_special for i in ids).decode("utf-8") == text
    specials = (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert sorted(specials) == list(range(tokenizer.num_special))  # no byte id is special
    assert len(tokenizer) == tokenizer.vocab_size == 259


def test_tokenize_corpus_with_byte_tokenizer() -> None:
    ids = tokenize_corpus(None, vocab_size=1024)
    assert ids.ndim == 1 and ids.dtype == torch.long
    assert ids.numel() == len(corpus_text().encode("utf-8"))
    assert int(ids.max()) < 259
    assert bytes(i - ByteTokenizer.num_special for i in ids.tolist()) == corpus_text().encode("utf-8")


def test_tokenize_corpus_rejects_too_small_vocab() -> None:
    with pytest.raises(CaseError, match=r"vocab_size=100 .*259"):
        tokenize_corpus(None, vocab_size=100)


# -- split and windows ---------------------------------------------------------------------------
def test_split_holds_out_the_tail() -> None:
    ids = torch.arange(1000)
    train, heldout = split_train_heldout(ids, 0.1)
    assert torch.equal(train, torch.arange(900))
    assert torch.equal(heldout, torch.arange(900, 1000))
    assert torch.equal(torch.cat([train, heldout]), ids)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="heldout_fraction"):
        split_train_heldout(torch.arange(100), fraction)


def test_training_windows_never_touch_heldout() -> None:
    # Token values equal their positions, so a window's values say where it was cut from.
    ids = torch.arange(5000)
    train, heldout = split_train_heldout(ids, 0.2)
    boundary = train.numel()
    batches = text_batches(train, batch_size=4, seq_len=64, count=200, seed=0)
    everything = torch.stack(batches)
    assert int(everything.max()) < boundary
    # Each row is one contiguous window.
    assert bool((everything.diff(dim=-1) == 1).all())
    windows = heldout_windows(heldout, seq_len=64, max_windows=100)
    assert int(windows.min()) >= boundary


def test_text_batches_reach_both_ends_of_the_training_part() -> None:
    # 7 possible offsets, 200 draws: every offset is drawn, the first and last tokens included.
    windows = torch.stack(text_batches(torch.arange(70), batch_size=4, seq_len=64, count=50, seed=0))
    assert (int(windows.min()), int(windows.max())) == (0, 69)


def test_text_batches_are_seeded() -> None:
    train = torch.arange(10_000)
    a = text_batches(train, 2, 32, 5, seed=1)
    b = text_batches(train, 2, 32, 5, seed=1)
    c = text_batches(train, 2, 32, 5, seed=2)
    assert all(x.shape == (2, 32) and x.dtype == torch.long for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_text_batches_too_short_corpus_names_sizes() -> None:
    with pytest.raises(CaseError, match=r"has 100 tokens.*seq_len=128"):
        text_batches(torch.arange(100), batch_size=1, seq_len=128, count=1, seed=0)
    assert text_batches(torch.arange(128), 1, 128, 1, 0)[0].shape == (1, 128)  # exactly one window fits


def test_heldout_windows_non_overlapping_and_capped() -> None:
    heldout = torch.arange(1000, 1350)
    windows = heldout_windows(heldout, seq_len=100, max_windows=10)
    assert windows.shape == (3, 100)  # 350 // 100, partial tail dropped
    assert torch.equal(windows.flatten(), torch.arange(1000, 1300))
    assert heldout_windows(heldout, seq_len=100, max_windows=2).shape == (2, 100)
    assert torch.equal(heldout_windows(heldout, 100, 10), windows)


def test_heldout_windows_too_short_names_sizes() -> None:
    with pytest.raises(CaseError, match=r"has 50 tokens.*seq_len=64"):
        heldout_windows(torch.arange(50), seq_len=64, max_windows=4)


def test_real_corpus_pipeline_with_byte_tokenizer() -> None:
    ids = tokenize_corpus(None, vocab_size=1024)
    train, heldout = split_train_heldout(ids)
    batches = text_batches(train, batch_size=2, seq_len=256, count=3, seed=0)
    windows = heldout_windows(heldout, seq_len=256, max_windows=16)
    assert windows.shape == (16, 256)
    assert all(int(b.max()) < 1024 for b in batches)


# -- with the real model's tokenizer (converted once into the default cache) -------------------------
@pytest.mark.slow
def test_tokenize_corpus_with_real_tokenizer() -> None:
    from transformers import AutoTokenizer

    from qlora_core.models import REAL_MODEL
    from qlora_core.models.resolve import resolve_model

    resolved = resolve_model(REAL_MODEL)
    ids = tokenize_corpus(resolved.tokenizer_path, resolved.vocab_size)
    assert ids.ndim == 1 and ids.dtype == torch.long
    assert int(ids.max()) < resolved.vocab_size
    # A subword tokenizer: several characters per token on English prose and code.
    assert 2.5 < len(corpus_text()) / ids.numel() < 8
    tokenizer = AutoTokenizer.from_pretrained(resolved.tokenizer_path)
    assert tokenizer.decode(ids.tolist()) == corpus_text()
    with pytest.raises(CaseError, match="outside the model's vocab_size=1000"):
        tokenize_corpus(resolved.tokenizer_path, vocab_size=1000)


# -- the corpus cache ----------------------------------------------------------------------------------
def test_the_corpus_is_tokenized_once_and_read_back(tmp_path, monkeypatch) -> None:
    from qlora_core.engines import data
    from qlora_core.models.cache import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    first = data.cached_corpus_ids(None, vocab_size=1024)
    assert torch.equal(first, tokenize_corpus(None, vocab_size=1024))
    assert len(list((tmp_path / "corpus").glob("[!.]*"))) == 1

    def no_tokenizing(*args: object) -> torch.Tensor:
        raise AssertionError("tokenized again")

    monkeypatch.setattr(data, "tokenize_corpus", no_tokenizing)
    assert torch.equal(data.cached_corpus_ids(None, vocab_size=1024), first)  # read back
    with pytest.raises(AssertionError, match="tokenized again"):  # another key: another entry
        data.cached_corpus_ids(None, vocab_size=2048)


def test_the_corpus_key_follows_the_tokenizer_files(tmp_path) -> None:
    from qlora_core.engines.data import corpus_key

    (tmp_path / "tokenizer.json").write_text("{}")
    before = corpus_key(str(tmp_path), 1024)
    assert before != corpus_key(None, 1024) and before != corpus_key(str(tmp_path), 2048)
    (tmp_path / "tokenizer.json").write_text('{"changed": 1}')
    assert corpus_key(str(tmp_path), 1024) != before
