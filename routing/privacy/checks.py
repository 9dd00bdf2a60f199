"""Check-digit rules for the numbers the scrubber recognizes.

A bare run of ten or sixteen digits is everywhere in code (timestamps, ids, literals); what makes
it an INN or a card number is that its check digits agree. These functions take the digits
alone (separators already removed) and answer whether the number is well formed; a wrong length
or a non-digit is simply "not valid", never an exception, so a recognizer can ask cheaply.
"""

from __future__ import annotations

from operator import mul

_INN10 = (2, 4, 10, 3, 5, 9, 4, 6, 8)
_INN12_A = (7, 2, 4, 10, 3, 5, 9, 4, 6, 8)
_INN12_B = (3, 7, 2, 4, 10, 3, 5, 9, 4, 6, 8)

# ISO 13616 lengths (SWIFT IBAN registry) for the countries a prompt is likely to carry.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33,
    "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


_DOUBLED = {str(d): (d * 2 - 9 if d > 4 else d * 2) for d in range(10)}  # a Luhn digit doubled
_BASE36 = {c: str(int(c, 36)) for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"}  # IBAN: A=10 … Z=35


def _weighted(digits: str, weights: tuple[int, ...]) -> int:
    return sum(map(mul, map(int, digits), weights))


def luhn_valid(digits: str) -> bool:
    """Cards (ISO/IEC 7812): doubling every second digit from the right, the sum ends in 0."""
    if len(digits) < 2 or not (digits.isascii() and digits.isdigit()):
        return False
    total = sum(map(int, digits[-1::-2])) + sum(map(_DOUBLED.__getitem__, digits[-2::-2]))
    return total % 10 == 0


def inn_valid(digits: str) -> bool:
    """INN (ФНС): 10 digits for an organisation (one check digit), 12 for a person (two); each
    check digit is the weighted sum mod 11, then mod 10."""
    if not (digits.isascii() and digits.isdigit()):
        return False
    if len(digits) == 10:
        return _weighted(digits, _INN10) % 11 % 10 == int(digits[9])
    if len(digits) == 12:
        return _weighted(digits, _INN12_A) % 11 % 10 == int(digits[10]) and _weighted(
            digits, _INN12_B
        ) % 11 % 10 == int(digits[11])
    return False


def snils_valid(digits: str) -> bool:
    """SNILS (ПФР): 9 digits weighted 9..1; a sum under 100 is the control number itself, 100 and
    101 give 00, above that the sum mod 101 (100 again giving 00). Numbers up to 001-001-998 were
    issued without a control rule, so nothing tells them from noise: not valid here."""
    if len(digits) != 11 or not (digits.isascii() and digits.isdigit()):
        return False
    if int(digits[:9]) <= 1001998:
        return False
    total = _weighted(digits, (9, 8, 7, 6, 5, 4, 3, 2, 1))
    control = total % 101 if total > 101 else total
    return (0 if control >= 100 else control) == int(digits[9:])


def ogrn_valid(digits: str) -> bool:
    """OGRN (13 digits: the first 12 mod 11, then mod 10, is the last) and OGRNIP (15 digits: the
    first 14 mod 13, then mod 10)."""
    if not (digits.isascii() and digits.isdigit()):
        return False
    if len(digits) == 13:
        return int(digits[:12]) % 11 % 10 == int(digits[12])
    if len(digits) == 15:
        return int(digits[:14]) % 13 % 10 == int(digits[14])
    return False


def iban_valid(text: str) -> bool:
    """IBAN (ISO 13616): the country's length (15..34 for a country not in the table), then the
    first four characters moved to the end, letters as 10..35, the number mod 97 is 1. Spaces are
    ignored; lower case is not an IBAN."""
    iban = text.replace(" ", "")
    if not (iban.isascii() and iban.isalnum() and iban[:2].isalpha() and iban[2:4].isdigit()):
        return False
    if iban.upper() != iban:
        return False
    expected = IBAN_LENGTHS.get(iban[:2])
    if (len(iban) != expected) if expected else not 15 <= len(iban) <= 34:
        return False
    return int("".join(map(_BASE36.__getitem__, iban[4:] + iban[:4]))) % 97 == 1
