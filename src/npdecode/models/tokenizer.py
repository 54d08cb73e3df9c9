"""Text in and out for HuggingFace checkpoints, through a ``tokenizer.json`` file.

Models and search strategies work on token ids only; this small wrapper is the optional bridge
to text. It needs the ``tokenizers`` package (the ``hf`` extra), imported when a tokenizer is
loaded, never at package import.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from npdecode.models.protocol import id_list


class Tokenizer:
    """A fast (Rust) tokenizer read from ``tokenizer.json``: text <-> token ids."""

    def __init__(self, backend) -> None:
        self._tok = backend  # a tokenizers.Tokenizer
        # Only a BPE model without an unknown token or byte fallback drops what it cannot
        # spell (other models raise, or use their unknown token). For such a tokenizer a copy
        # with an unknown token of its own finds the characters it drops (see encode).
        model = backend.model
        may_drop = (type(model).__name__ == "BPE" and model.unk_token is None
                    and not model.byte_fallback)
        self._finder = _with_unknown_token(backend) if may_drop else None

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (added tokens included)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Text -> token ids (no special tokens added; GPT-2 adds none anyway).

        A character that has no token (the tokenizer has neither an unknown token nor
        byte-level encoding) is refused, naming its position, rather than dropped. What the
        tokenizer's normalizer and pre-tokenizer leave out on purpose (whitespace, accents)
        is not a dropped character.
        """
        if not isinstance(text, str):
            raise ValueError(f"encode takes a str, got {type(text).__name__}")
        try:
            encoding = self._tok.encode(text, add_special_tokens=False)
            found = (None if self._finder is None
                     else self._finder[0].encode(text, add_special_tokens=False))
        except Exception as err:  # the Rust side raises a bare Exception (no unknown token)
            raise ValueError(f"cannot encode {text[:40]!r}: {err}") from None
        if found is not None and self._finder[1] in found.ids:
            start, chars = _span(found, found.ids.index(self._finder[1]), text)
            raise ValueError(f"character {chars!r} at position {start} has no token in this "
                             f"tokenizer (it has no unknown token to stand for it); remove it "
                             f"or use a tokenizer that covers it")
        return encoding.ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Token ids -> text; an id that is not an integer in [0, vocab_size) is refused."""
        return self._tok.decode(id_list(ids, self.vocab_size),
                                skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> int | None:
        """The id of a token string such as ``"<|endoftext|>"``, or None if it is unknown."""
        return self._tok.token_to_id(token)


def _span(encoding, i: int, text: str) -> tuple[int, str]:
    """(start, characters) of ``text`` behind token i: up to the next token, whitespace
    aside (a normalizer may compose several characters into one, whose offsets then cover
    only the first)."""
    start, end = encoding.offsets[i]
    following = encoding.offsets[i + 1][0] if i + 1 < len(encoding.ids) else len(text)
    return start, text[start:max(end, following)].rstrip() or text[start:end]


def _with_unknown_token(backend):
    """(copy, id): a copy of a BPE tokenizer without an unknown token, given one under a new
    id. Both encode a text alike (the same normalizer, pre-tokenizer, merges and added tokens)
    except where the original drops a character: the copy puts its unknown id there, with
    the character's position in its offsets."""
    settings = json.loads(backend.to_str())
    vocab = settings["model"]["vocab"]
    name = "<npdecode-unknown>"
    while name in vocab:
        name += "_"
    unknown = backend.get_vocab_size(with_added_tokens=True) + len(vocab)  # an unused id
    vocab[name] = unknown
    settings["model"]["unk_token"] = name
    return type(backend).from_str(json.dumps(settings)), unknown


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
