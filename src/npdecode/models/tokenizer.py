"""Text in and out for HuggingFace checkpoints, through a ``tokenizer.json`` file.

Models and search strategies work on token ids only; this small wrapper is the optional bridge
to text. It needs the ``tokenizers`` package (the ``hf`` extra), imported when a tokenizer is
loaded, never at package import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from npdecode.models.protocol import id_list


class Tokenizer:
    """A fast (Rust) tokenizer read from ``tokenizer.json``: text <-> token ids."""

    def __init__(self, backend) -> None:
        self._tok = backend  # a tokenizers.Tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (added tokens included)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Text -> token ids (no special tokens added; GPT-2 adds none anyway)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Token ids -> text; an id that is not an integer in [0, vocab_size) is refused."""
        return self._tok.decode(id_list(ids, self.vocab_size),
                                skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> int | None:
        """The id of a token string such as ``"<|endoftext|>"``, or None if it is unknown."""
        return self._tok.token_to_id(token)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load ``path/tokenizer.json`` (``path`` may also be the file itself)."""
    try:
        from tokenizers import Tokenizer as Backend
    except ImportError as e:
        raise ImportError("text input and output need tokenizers: pip install tokenizers, "
                          "or in a clone of npdecode: python -m pip install '.[hf]'") from e
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"no tokenizer.json at {path}")
    try:
        return Tokenizer(Backend.from_file(str(file)))
    except Exception as err:  # the Rust side raises a bare Exception for a malformed file
        raise ValueError(f"{file} is not a valid tokenizer.json: {err}") from None
