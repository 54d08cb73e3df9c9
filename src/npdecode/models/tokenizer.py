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
        self._chars: dict[str, bool] = {}  # character -> whether it has a token (see encode)
        # Only a BPE model without an unknown token or byte fallback drops what it cannot
        # spell (other models raise, or use their unknown token).
        model = backend.model
        self._may_drop = (type(model).__name__ == "BPE" and model.unk_token is None
                          and not model.byte_fallback)

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (added tokens included)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Text -> token ids (no special tokens added; GPT-2 adds none anyway).

        A character that has no token (the tokenizer has neither an unknown token nor
        byte-level encoding) is refused, naming its position, rather than dropped; only
        whitespace may be left out, as pre-tokenizers that split on it do.
        """
        if not isinstance(text, str):
            raise ValueError(f"encode takes a str, got {type(text).__name__}")
        try:
            encoding = self._tok.encode(text, add_special_tokens=False)
        except Exception as err:  # the Rust side raises a bare Exception (no unknown token)
            raise ValueError(f"cannot encode {text[:40]!r}: {err}") from None
        for pos, char in enumerate(text if self._may_drop else ""):
            if not (char.isspace() or self._has_token(char)):
                raise ValueError(f"character {char!r} at position {pos} has no token in this "
                                 f"tokenizer (it has no unknown token to stand for it); "
                                 f"remove it or use a tokenizer that covers it")
        return encoding.ids

    def _has_token(self, char: str) -> bool:
        """Whether ``char`` alone encodes to at least one token (a tokenizer without an
        unknown token or byte-level encoding drops a character outside its vocabulary)."""
        known = self._chars.get(char)
        if known is None:
            known = self._chars[char] = bool(self._tok.encode(char, add_special_tokens=False).ids)
        return known

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
