"""Text as the trigger matcher sees it: normalized, tokenized, and read three more ways.

- `normalize`: lower case, `ё` → `е`, fenced code blocks dropped (identifiers such as
  `test_user` in pasted code say nothing about who should answer).
- `swap_layout`: text typed with the wrong keyboard layout (`ntcns` is `тесты` typed on the
  English layout; `ыусгкшен` is `security` typed on the Russian one).
- `translit_key`: a coarse Latin spelling shared by a Russian stem and its transliterations, so
  `bezopasnost`, `uyazvimosti`, `arkhitektura` meet `безопасн`, `уязвим`, `архитектур`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

CODE_BLOCK = re.compile(r"```.*?(?:```|$)", re.DOTALL)
CYRILLIC_TOKEN = re.compile(r"[а-я]+")

_EN_KEYS = "qwertyuiop[]asdfghjkl;'zxcvbnm,.`"
_RU_KEYS = "йцукенгшщзхъфывапролджэячсмитьбюё"
TO_RUSSIAN = str.maketrans(_EN_KEYS, _RU_KEYS)
TO_ENGLISH = str.maketrans(_RU_KEYS, _EN_KEYS)

_CYR_TO_LAT = str.maketrans(
    {
        "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ё": "e", "ж": "zh", "з": "z",
        "и": "i", "й": "i", "к": "k", "л": "l", "м": "m", "н": "n", "о": "o", "п": "p", "р": "r",
        "с": "s", "т": "t", "у": "u", "ф": "f", "х": "h", "ц": "c", "ч": "ch", "ш": "sh", "щ": "sh",
        "ъ": "", "ы": "y", "ь": "", "э": "e", "ю": "yu", "я": "ya",
    }
)  # fmt: skip
_KEY_RULES: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    (re.compile(r"shch|sch"), "sh"),
    (re.compile(r"kh"), "h"),
    (re.compile(r"ts|tz"), "c"),
    (re.compile(r"[yij][ua]"), lambda m: m.group(0)[1]),  # ya, ia, ja -> a; yu, iu, ju -> u
    (re.compile(r"[yj]o"), "o"),
    (re.compile(r"[yj]e"), "e"),
    (re.compile(r"ei|ey|ej|iy|ij|yi|y|j"), "i"),
    (re.compile(r"w"), "v"),
    (re.compile(r"x"), "ks"),
    (re.compile(r"ck|q"), "k"),
    (re.compile(r"'"), ""),
    (re.compile(r"(.)\1+"), r"\1"),
]


def normalize(text: str) -> str:
    return CODE_BLOCK.sub(" ", fold(text))


def fold(text: str) -> str:
    """Lower case, `ё` read as `е`."""
    return text.lower().replace("ё", "е")


def swap_layout(token: str) -> str:
    """The same keys read on the other layout: Latin -> Russian, Cyrillic -> English."""
    return token.translate(TO_RUSSIAN if token.isascii() else TO_ENGLISH)


def translit_key(word: str) -> str:
    """A coarse Latin key; Cyrillic is transliterated first, so both spellings meet."""
    key = word.translate(_CYR_TO_LAT)
    for pattern, replacement in _KEY_RULES:
        key = pattern.sub(replacement, key)
    return key
