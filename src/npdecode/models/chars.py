"""The character tokenizer of the name models: '.' plus the 26 lowercase letters.

Id 0 is '.', the end-of-name token. It also starts every sequence, so a prompt for the prefix
"em" is ``[0, 5, 13]`` and a finished name ends with 0: a model sees "." + name + ".".
"""

from __future__ import annotations

from typing import Iterable

from npdecode.models.protocol import id_list

EOS = 0  # '.': ends a name, and starts every sequence
ALPHABET = "." + "abcdefghijklmnopqrstuvwxyz"  # id i is ALPHABET[i]
VOCAB_SIZE = len(ALPHABET)  # 27


def encode(prefix: str) -> list[int]:
    """A name prefix -> token ids, starting with the start token 0.

    ``encode("em") == [0, 5, 13]``; ``encode("") == [0]``. Only lowercase a-z are accepted.
    """
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a string of lowercase letters a-z, got {prefix!r}")
    ids = [EOS]
    for pos, ch in enumerate(prefix):
        if not ("a" <= ch <= "z"):
            raise ValueError(
                f"character {ch!r} at position {pos} of {prefix!r} is not in the vocabulary; "
                f"the name models know only lowercase letters a-z")
        ids.append(ord(ch) - ord("a") + 1)
    return ids


def decode(ids: Iterable[int]) -> str:
    """Token ids -> text. A leading start token is skipped; decoding stops at the next 0.

    ``decode([0, 5, 13, 13, 1, 0, 7]) == "emma"``.
    """
    out = []
    for pos, tok in enumerate(id_list(ids, VOCAB_SIZE)):  # every id checked, even after a 0
        if tok == EOS:
            if pos == 0:
                continue  # the start token
            break
        out.append(ALPHABET[tok])
    return "".join(out)
