"""Token batches: synthetic (speed, memory) and real text (loss, perplexity).

Synthetic batches are seeded uniform random ids: content does not change the cost of a step, so
they measure speed and memory for any vocabulary. Real text is Python's own documentation
(`pydoc_data.topics`, shipped with every CPython), tokenized with the model's tokenizer or, for
random-init shapes that have none, a byte-level tokenizer. Its tail is held out for perplexity and
never seen in training.

The corpus differs between Python versions, and a GGUF-built tokenizer may split it differently
between transformers versions: compare losses and perplexities only within one environment.
Tokenized once per (Python, transformers, tokenizer files, vocabulary) and kept in the model
cache (`cached_corpus_ids`): every text case of a run tokenizes the same corpus the same way.
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

import torch

from qlora_core.cases.case import CaseError
from qlora_core.models.cache import build_once, cache_dir

_BYTE_VALUES = 256


def _check_positive(**sizes: int) -> None:
    bad = [f"{name}={value!r}" for name, value in sizes.items() if not isinstance(value, int) or value < 1]
    if bad:
        raise ValueError(f"{', '.join(bad)}: must be positive integers")


def _generator(seed: int) -> torch.Generator:
    # A private CPU generator: the same ids on every run and machine, whatever else draws numbers.
    return torch.Generator(device="cpu").manual_seed(seed)


def synthetic_batches(
    vocab_size: int, batch_size: int, seq_len: int, count: int, seed: int
) -> list[torch.Tensor]:
    """`count` LongTensors [batch_size, seq_len] of uniform random ids in [0, vocab_size), seeded."""
    _check_positive(vocab_size=vocab_size, batch_size=batch_size, seq_len=seq_len, count=count)
    generator = _generator(seed)
    return [
        torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator, dtype=torch.long)
        for _ in range(count)
    ]


def corpus_text() -> str:
    """Python's documentation topics (`pydoc_data.topics.topics`), joined in sorted key order."""
    from pydoc_data.topics import topics

    return "\n".join(topics[key] for key in sorted(topics))


class ByteTokenizer:
    """UTF-8 bytes as ids 3..258 after three special ids; for models without a tokenizer."""

    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2
    num_special = 3
    vocab_size = num_special + _BYTE_VALUES  # 259

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no special tokens added)."""
        return [byte + self.num_special for byte in text.encode("utf-8")]

    def __len__(self) -> int:
        return self.vocab_size


def tokenize_corpus(tokenizer_path: str | None, vocab_size: int) -> torch.Tensor:
    """The whole corpus as a 1-D LongTensor of ids < `vocab_size`.

    Uses `AutoTokenizer.from_pretrained(tokenizer_path)` when given, else `ByteTokenizer`.
    """
    text = corpus_text()
    if tokenizer_path is None:
        if vocab_size < ByteTokenizer.vocab_size:
            # The case asks for text on a model that cannot take it: a problem of the case.
            raise CaseError(
                [
                    f"vocab_size={vocab_size} is too small for the byte tokenizer, which needs"
                    f" {ByteTokenizer.vocab_size} ids; use a model with a larger vocabulary or its own"
                    " tokenizer"
                ]
            )
        ids = ByteTokenizer().encode(text)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        # One long text on purpose; verbose=False silences the "longer than model_max_length"
        # warning, which does not apply because windows are cut from it afterwards.
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    out = torch.tensor(ids, dtype=torch.long)
    if out.numel() and int(out.max()) >= vocab_size:
        raise CaseError(
            [
                f"tokenizer {tokenizer_path!r} produced id {int(out.max())}, outside the model's"
                f" vocab_size={vocab_size}"
            ]
        )
    return out


CORPUS_RECIPE = "corpus-ids-v1"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "merges.txt")


def corpus_key(tokenizer_path: str | None, vocab_size: int) -> str:
    """What the corpus ids depend on, hashed: the corpus (Python's version), the tokenizer (its
    files' bytes, and transformers' version, which builds it), the vocabulary bound."""
    import transformers

    digest = hashlib.sha256()
    for part in (CORPUS_RECIPE, platform.python_version(), transformers.__version__, str(vocab_size)):
        digest.update(part.encode() + b"\0")
    if tokenizer_path is None:
        digest.update(b"byte-tokenizer")
    else:
        for name in _TOKENIZER_FILES:
            path = Path(tokenizer_path) / name
            digest.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"-"))
    return digest.hexdigest()[:16]


def cached_corpus_ids(tokenizer_path: str | None, vocab_size: int) -> torch.Tensor:
    """`tokenize_corpus`, tokenized once into the model cache and read back by later cases."""

    def build(out: Path) -> dict[str, str]:
        torch.save(tokenize_corpus(tokenizer_path, vocab_size), out / "ids.pt")
        return {"tokenizer_path": str(tokenizer_path)}

    final = cache_dir() / "corpus" / corpus_key(tokenizer_path, vocab_size)
    return torch.load(build_once(final, CORPUS_RECIPE, build) / "ids.pt")


def split_train_heldout(
    ids: torch.Tensor, heldout_fraction: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out): a contiguous split whose held-out part is the tail of `ids`."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction={heldout_fraction!r} must be in (0, 1)")
    if ids.ndim != 1 or ids.numel() < 2:
        raise ValueError(f"ids must be a 1-D tensor of at least 2 tokens, got shape {tuple(ids.shape)}")
    heldout = min(max(1, round(ids.numel() * heldout_fraction)), ids.numel() - 1)
    boundary = ids.numel() - heldout
    return ids[:boundary], ids[boundary:]


def text_batches(
    train_ids: torch.Tensor, batch_size: int, seq_len: int, count: int, seed: int
) -> list[torch.Tensor]:
    """`count` LongTensors [batch_size, seq_len] of windows at seeded random offsets in `train_ids`."""
    _check_positive(batch_size=batch_size, seq_len=seq_len, count=count)
    n = train_ids.numel()
    if n < seq_len:  # the case's seq_len does not fit the corpus: a problem of the case
        raise CaseError(
            [
                f"training corpus has {n} tokens, too short for one window of seq_len={seq_len};"
                f" lower seq_len or the held-out fraction"
            ]
        )
    starts = torch.randint(0, n - seq_len + 1, (count, batch_size), generator=_generator(seed))
    # [count, batch, 1] + [seq_len] -> indices of every token of every window.
    index = starts.unsqueeze(-1) + torch.arange(seq_len)
    return list(train_ids[index].unbind(0))


def heldout_windows(heldout_ids: torch.Tensor, seq_len: int, max_windows: int) -> torch.Tensor:
    """[n, seq_len] consecutive non-overlapping windows from the start of the held-out tail.

    n = min(max_windows, len(heldout_ids) // seq_len); the partial last window is dropped.
    """
    _check_positive(seq_len=seq_len, max_windows=max_windows)
    n = min(max_windows, heldout_ids.numel() // seq_len)
    if n == 0:
        raise CaseError(
            [
                f"held-out corpus has {heldout_ids.numel()} tokens, too short for one window of"
                f" seq_len={seq_len}; lower seq_len or raise the held-out fraction"
            ]
        )
    return heldout_ids[: n * seq_len].reshape(n, seq_len).clone()
