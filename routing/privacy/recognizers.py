"""What the scrubber recognizes: compiled patterns and the checks that turn a match into a finding.

Every pattern begins with a literal or a character class (a boundary that looks behind is checked
after the first character, or in Python on the rare match), so the regex engine skips through text
that cannot match in C instead of trying every position. All the kinds made of digits share one
pass, and a bare run of digits goes to the check of each kind whose length it has (10 or 12: INN,
11: SNILS, 13 or 15: OGRN, 13..16: card); the checks are cheap next to the scan. Versions
(`version 1.2.3.4`, `==2.0.0.1`), loopback, unspecified and netmask addresses are not taken for
IPs; hex hashes and UUIDs never reach a check because their digits touch letters or dashes.
"""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from itertools import pairwise
from typing import NamedTuple

from routing.privacy.checks import iban_valid, inn_valid, luhn_valid, ogrn_valid, snils_valid

# the order breaks ties between overlapping findings of one length: the more specific kind wins
PII_TYPES: tuple[str, ...] = (
    "jwt", "api_key", "denylist", "email", "iban", "card", "snils", "inn", "ogrn", "passport", "phone", "ip",
)  # fmt: skip
_RANK = {kind: i for i, kind in enumerate(PII_TYPES)}


class Finding(NamedTuple):
    start: int
    end: int
    kind: str


Recognizer = Callable[[str], Iterator[Finding]]

# A pattern that runs on (a key, a token) checks what stands before it right after its literal, so
# that a long run holding the literal many times (`eyJeyJeyJ…`) is read once, not once per literal.
# Every kind made of digits is read in one pass: a digit that stands alone (no letter, digit, dot
# or dash before it: `a1b2…`, UUID groups, `1.2.3`, `2024-01-15` never start one), then the shapes
# in turn; the IBAN branch is the digit after two capitals that start a word. The look-behind sits
# after the first digit (see above).
_NUMBER = re.compile(
    r"[0-9](?:(?<![\w.\-][0-9])(?:"
    r"(?P<ip>[0-9]{0,2}(?:\.[0-9]{1,3}){3})"
    r"|(?<=8)(?P<phone>[ \-]?\(?[3489][0-9]{2}\)?[ \-]?[0-9]{3}[ \-]?[0-9]{2}[ \-]?[0-9]{2})"
    r"|(?P<snils>[0-9]{2}(?P<s1>[ \-])[0-9]{3}(?P=s1)[0-9]{3}[ \-][0-9]{2})"
    r"|(?P<card>[0-9]{3}(?P<s2>[ \-])(?:[0-9]{4}(?P=s2)[0-9]{4}(?P=s2)[0-9]{1,4}(?:(?P=s2)[0-9]{3})?"
    r"|[0-9]{6}(?P=s2)[0-9]{5}))"
    r"|(?P<run>[0-9]{9,18})"
    r")(?![\w\-]|\.[0-9])"
    r"|(?<=(?<!\w)[A-Z]{2}[0-9])(?P<iban>[0-9](?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?))(?!\w))"
)
# issuer prefixes: Visa, Mastercard, Mir, Amex, Diners, JCB, Discover, UnionPay, Maestro
_CARD_IIN = re.compile(r"4|5[0-9]|2(?:2[0-9]|[3-6][0-9]|7[0-2])|3[0-9]|6[0-9]")
_ALONE_R = r"(?![\w\-]|\.[0-9])"
_PHONE_RU = re.compile(  # +7 forms; the 8 forms are in _NUMBER
    r"\+7(?<![\w+.\-]..)[ \-]?\(?[3489][0-9]{2}\)?[ \-]?[0-9]{3}[ \-]?[0-9]{2}[ \-]?[0-9]{2}" + _ALONE_R
)
_PHONE_INTL = re.compile(
    r"\+(?<![\w+]\+)[1-9](?:[0-9]{7,14}|[0-9]{0,3}(?:[ \-]?\([0-9]{1,5}\)|[ \-][0-9]{1,14}){1,7})" + _ALONE_R
)
_SIGNED_DATE = re.compile(r"\+[0-9]{4}-[0-9]{2}-[0-9]{2}")  # ISO 8601 expanded years: +1980-02-29
_IPV6 = re.compile(r":[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:]*")  # from its first colon: a literal to jump to
_HEX_BEFORE = re.compile(r"[0-9A-Fa-f]{0,5}")  # read backwards from that colon
_VERSION_BEFORE = re.compile(
    r"(?:\bv|\bver|version\w*|верси[яиюей]|section|раздел|пункт|§|==|>=|<=|~=|!=|\^|@)[\s\"':=]*$", re.IGNORECASE
)
_INN_WORD = re.compile(r"инн|\binn\b|tax|налог", re.IGNORECASE)
# found as literals from their second letter (the first is either case): паспорт…, серия, passport
_PASSPORT_WORDS = (
    ("аспорт", "пП"),
    ("АСПОРТ", "П"),
    ("ерия", "сС"),
    ("ЕРИЯ", "С"),
    ("assport", "pP"),
    ("ASSPORT", "P"),
)
_PASSPORT_TAIL = re.compile(r"[а-яёА-ЯЁ]*[^0-9\n]{0,24}?([0-9]{2} ?[0-9]{2}[^0-9\n]{0,12}?[0-9]{6})(?![0-9])")
_AT = re.compile(r"@[\w\-]+(?:\.[\w\-]+)*\.[^\W\d_]{2,}(?![\w\-])")
_LOCAL_REVERSED = re.compile(r"[\w.%+\-]{1,64}")
_JWT = re.compile(r"eyJ(?<![\w\-]eyJ)[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*")
_KEYS = (  # (pattern, must its value hold a digit); each begins with a literal the engine jumps to
    (re.compile(r"sk-(?<![\w\-]sk-)(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_\-]{20,}"), True),
    (re.compile(r"A[KS]IA[A-Z0-9]{16}(?![A-Za-z0-9])"), False),
    (re.compile(r"gh[pousr]_[A-Za-z0-9]{36,251}(?![A-Za-z0-9])"), False),
    (re.compile(r"github_pat_[A-Za-z0-9_]{22,255}"), False),
    (re.compile(r"xox(?<![\w\-]xox)[baprs]-[A-Za-z0-9\-]{10,}"), True),
    (re.compile(r"AIza[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-])"), False),
)
_BEARERS = tuple(re.compile(word + r"[ \t]+([A-Za-z0-9._~+/\-]{16,}=*)") for word in ("earer", "EARER"))
# `aws_secret_access_key = …`: found from "ecret" (a literal), the "aws_s" before it checked after
_AWS_SECRETS = tuple(
    re.compile(word + r"(?i:_?(?:access_?)?key)[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])")
    for word in ("ecret", "ECRET")
)


def _free_before(text: str, start: int) -> bool:
    """Nothing word-like right before `start`: a key inside a longer identifier is not a key."""
    return start == 0 or not (text[start - 1].isalnum() or text[start - 1] in "_-")


def _has_digit(value: str) -> bool:
    return any(map(str.isdigit, value))


def _card(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and _CARD_IIN.match(digits) is not None and luhn_valid(digits)


def _inn(digits: str, text: str, start: int) -> bool:
    """Ten digits pass the INN check 1 time in 10 by chance, and ten-digit numbers (timestamps,
    sizes, ids) are everywhere in code: a 10-digit INN needs its word first (`ИНН`, `INN`, `tax
    id`), as it has in prose and in requisites (`ИНН/КПП`). Twelve digits (1 in 100) need none."""
    if digits.startswith("00") or not inn_valid(digits):  # the region code is 01..99
        return False
    return len(digits) == 12 or _INN_WORD.search(text, max(0, start - 40), start) is not None


def _ogrn(digits: str) -> bool:
    """Beyond the check digit: the first digit says OGRN (1, 5) or OGRNIP (3), the next two the
    year of registration (2002 on) — which also turns away millisecond timestamps (`17…`)."""
    kind_ok = digits[0] in "15" if len(digits) == 13 else digits[0] == "3"
    return kind_ok and 2 <= int(digits[1:3]) <= 40 and ogrn_valid(digits)


def numbers(text: str) -> Iterator[Finding]:
    for match in _NUMBER.finditer(text):
        start, end = match.span()
        kind = match.lastgroup
        if kind == "run":
            yield from _run(match.group(), start, end, text)
        elif kind == "phone":
            yield Finding(start, end, "phone")
            if end - start == 11:  # 89123456789: eleven digits, a SNILS too if its check says so
                yield from _run(match.group(), start, end, text)
        elif kind == "ip":
            if _ipv4_ok(match.group(), text, start):
                yield Finding(start, end, "ip")
        elif kind == "iban":
            if iban_valid(text[start - 2 : end]):
                yield Finding(start - 2, end, "iban")
        elif kind is not None:  # snils, card: grouped by spaces or dashes
            digits = match.group().replace(" ", "").replace("-", "")
            if snils_valid(digits) if kind == "snils" else _card(digits):
                yield Finding(start, end, kind)


def _run(digits: str, start: int, end: int, text: str) -> Iterator[Finding]:
    """A bare run of 10..19 digits, to each check whose length it has."""
    size = len(digits)
    if size in (10, 12) and _inn(digits, text, start):
        yield Finding(start, end, "inn")
    if size == 11 and snils_valid(digits):
        yield Finding(start, end, "snils")
    if size in (13, 15) and _ogrn(digits):
        yield Finding(start, end, "ogrn")
    if 13 <= size <= 16 and _card(digits):  # 17..19 bare digits: int64s in code, rarely a card
        yield Finding(start, end, "card")


def phones(text: str) -> Iterator[Finding]:
    """The `+` forms (`+7 (912) 345-67-89`, `+44 20 7946 0958`); `8 912 …` is read with the numbers."""
    if "+" not in text:
        return
    if "+7" in text:
        for match in _PHONE_RU.finditer(text):
            yield Finding(*match.span(), "phone")
    for match in _PHONE_INTL.finditer(text):
        value = match.group()
        if 8 <= sum(map(str.isdigit, value)) <= 15 and not _SIGNED_DATE.match(value):
            yield Finding(*match.span(), "phone")


def _ipv4_ok(value: str, text: str, start: int) -> bool:
    octets = value.split(".")
    if any(len(o) > 1 and o[0] == "0" for o in octets) or any(int(o) > 255 for o in octets):
        return False
    if octets[0] in ("0", "127", "255"):
        return False  # unspecified, loopback, netmasks and broadcast: in every config, nobody's data
    if len(value) == 7:
        return False  # four single digits: `1.0.0.0`, `3.1.1.6` are versions far more often than hosts
    return _VERSION_BEFORE.search(text, max(0, start - 16), start) is None


def _ipv6_ok(value: str) -> bool:
    groups = [g for g in value.split(":") if g]
    # `1::2` (a slice), `Add::add` (a path) are valid addresses: demand three groups and a digit
    if len(groups) < 3 or not _has_digit(value):
        return False
    try:
        address = ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return not (address.is_loopback or address.is_unspecified)


def ipv6s(text: str) -> Iterator[Finding]:
    for match in _IPV6.finditer(text):
        colon, end = match.span()
        before = _HEX_BEFORE.match(text[max(0, colon - 5) : colon][::-1])
        start = colon - (len(before.group()) if before else 0)
        if colon - start > 4 or (start and (text[start - 1].isalnum() or text[start - 1] in "_:.")):
            continue  # part of a longer word
        if end < len(text) and (text[end].isalnum() or text[end] in "_."):
            continue
        if _ipv6_ok(text[start:end]):
            yield Finding(start, end, "ip")


def passports(text: str) -> Iterator[Finding]:
    """Ten digits are too common to take alone: a context word must come first, so the scan is
    for the words (literals), and the number is read after each."""
    for rest, first in _PASSPORT_WORDS:
        at = text.find(rest, 1)
        while at != -1:
            word = at - 1
            if text[word] in first and (not word or not (text[word - 1].isalnum() or text[word - 1] == "_")):
                match = _PASSPORT_TAIL.match(text, at + len(rest))
                if match:
                    yield Finding(*match.span(1), "passport")
            at = text.find(rest, at + len(rest))


def emails(text: str) -> Iterator[Finding]:
    """Found from the `@` (a literal the engine jumps to), the local part read backwards."""
    if "@" not in text:
        return
    for match in _AT.finditer(text):
        at = match.start()
        local = _LOCAL_REVERSED.match(text[max(0, at - 64) : at][::-1])
        if local is None:
            continue
        name = local.group()[::-1].lstrip(".")
        if name and name != "git":  # git@github.com:org/repo is a host's login, not a person
            yield Finding(at - len(name), match.end(), "email")


def secrets(text: str) -> Iterator[Finding]:
    for pattern, digit in _KEYS:
        for match in pattern.finditer(text):
            if _free_before(text, match.start()) and (not digit or _has_digit(match.group())):
                yield Finding(*match.span(), "api_key")
    for bearer in _BEARERS:
        for match in bearer.finditer(text):
            word = match.start() - 1  # the B of Bearer
            if word >= 0 and text[word] in "Bb" and _free_before(text, word) and _has_digit(match.group(1)):
                yield Finding(*match.span(1), "api_key")
    for secret in _AWS_SECRETS:
        for match in secret.finditer(text):
            if text[max(0, match.start() - 5) : match.start()].lower().endswith(("aws_s", "awss")):
                yield Finding(*match.span(1), "api_key")


def jwts(text: str) -> Iterator[Finding]:
    for match in _JWT.finditer(text):
        yield Finding(*match.span(), "jwt")


RECOGNIZERS: tuple[Recognizer, ...] = (jwts, secrets, emails, numbers, passports, phones, ipv6s)


def denylist_recognizer(terms: Sequence[str]) -> Recognizer | None:
    """The operator's own terms, case-insensitive, whole words only (Cyrillic ones too); longer
    terms first, so `acme corp` wins over `acme`.

    A case-insensitive pattern has no literal for the engine to jump to and tries every position
    (several times slower than the whole scan), so the terms are matched, lower-cased, in the
    lower-cased text; where lowering changes the text's length (`İ`), offsets would not hold and
    the case-insensitive pattern runs instead."""
    words = sorted({t.strip().lower() for t in terms if t.strip()}, key=len, reverse=True)
    if not words:
        return None
    lowered = re.compile("|".join(_whole_word(w) for w in words))
    folded = re.compile(lowered.pattern, re.IGNORECASE)

    def denylist(text: str) -> Iterator[Finding]:
        lower = text.lower()
        pattern, subject = (lowered, lower) if len(lower) == len(text) else (folded, text)
        for match in pattern.finditer(subject):
            yield Finding(*match.span(), "denylist")

    return denylist


def _whole_word(term: str) -> str:
    """`term` where no word character touches it; the look-behind comes after its first character,
    so the pattern still begins with a literal."""
    first, rest = re.escape(term[0]), re.escape(term[1:])
    before = "(?<!\\w.)" if term[0].isalnum() or term[0] == "_" else ""
    after = "(?!\\w)" if term[-1].isalnum() or term[-1] == "_" else ""
    return first + before + rest + after


def findings(text: str, recognizers: Sequence[Recognizer]) -> list[Finding]:
    """Every finding, sorted, overlaps resolved: the longer span wins, then the more specific kind."""
    found = sorted({f for recognize in recognizers for f in recognize(text)})
    if all(a.end <= b.start for a, b in pairwise(found)):
        return found  # the usual case: nothing overlaps
    ordered = sorted(found, key=lambda f: (f.start - f.end, _RANK[f.kind], f.start))
    starts: list[int] = []  # the kept spans' starts, sorted; the spans are disjoint
    kept: list[Finding] = []
    for finding in ordered:
        i = bisect_right(starts, finding.start)
        if (i and kept[i - 1].end > finding.start) or (i < len(kept) and kept[i].start < finding.end):
            continue  # overlaps a longer (or as long and more specific) finding
        starts.insert(i, finding.start)
        kept.insert(i, finding)
    return kept
