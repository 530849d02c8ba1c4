"""Personal data in training texts: e-mail addresses, phone numbers, card numbers, IP addresses and IBANs,
found, counted per type, masked for display and replaced by typed placeholders (`data.redact_pii`).

The detectors are regular expressions followed by a validation, tuned for precision: a model trained on
redacted data should not lose ordinary numbers (years, prices, dates, times, scores, versions, ISBNs, order
numbers) to a placeholder. What each type accepts:

  EMAIL  local@domain.tld: a local part of letters, digits and . _ % + - (not starting or ending with a dot),
         a domain of dot-separated labels and a top-level domain of 2-24 letters.
  PHONE  international: + and a country code, then groups of digits separated by spaces, dots, dashes or
         a parenthesised group, 8-15 digits in all (E.164's limit; written with no separator at all, 11-15,
         as +2147483647 is a number in code more often than a phone); or 00 in place of the + (0044 20 7946
         0958), the country code standing alone and one of the ITU plan (COUNTRY_CODES), then separated groups;
         national, 10-12 digits in all: (area) 123-4567 style with a parenthesised area code, maybe after a
         1 or 8 (1 (800) 555-0199, 8 (495) 123-45-67), 555-123-4567 / 555.123.4567 / 555 123 4567 (3-3-4, one
         separator, maybe after 1: 1-800-555-0199), or a trunk 0 and an area code then groups (020 7946 0958,
         030-1234-5678, French 06 12 34 56 78) or one block (07700 900123, 030 12345678, 089/1234567). A
         trunk group is never 00 (that is the international prefix, or a zero-padded id), and a month then a
         year (01 1990 2000, 01-2024-0001) is a period or a reference. Bare digit runs are never phone
         numbers (with no separators nothing tells them from an order number), nor is a stretch of a longer
         run of digit groups (000 001 002 003 ...) or one right after a time's ':' (09:00 0930 1000).
  CARD   13-19 digits, bare or in groups separated by single spaces or dashes (not inside a longer run of
         groups: a list of years), with the prefix and length of a card network (NETWORKS: Visa, Mastercard,
         American Express, Discover, Diners Club, JCB, UnionPay) and passing the Luhn check. A random number
         of a network's length and prefix passes Luhn one time in ten, so such an order number or id is
         reported (there is no telling it from a card number).
  IP     IPv4 dotted quads with every part 0-255 and no leading zeros; one written as a version (v1.2.3.4,
         "version 1.2.3.4", "release", "build", "rev") or after a program's name (Python 3.10.12.1:
         VERSION_WORDS), one with a fifth part (1.2.3.4.5) and one glued to a dash (a version in a file name,
         FBF-3.6.0.0-x.zip) are not addresses; a four-part section number, 1.1.1.4, is taken for one (1.1.1.1
         is a real address). IPv6 when Python's `ipaddress` accepts it and it has two groups or more, a digit,
         and "::" or a hex letter (times like 12:30:45 have neither; [::3] and f::A are code), and, written
         in decimal digits only, three groups or more (a[1::2], arr[10::5] and a ratio 3::1 are slices and
         ratios; addresses have hex letters or more groups: [2001:db8::1]). Addresses that name no machine
         are left alone: 0.0.0.0, loopback (127.0.0.1, ::1) and netmasks (255.255.255.0); private ones
         (192.168.1.10) count.
  IBAN   two capital letters of a country in the IBAN registry, two check digits, the account part (groups
         of four may be separated by single spaces), the country's IBAN length, and the ISO 13616 mod-97
         check (remainder 1).

Where two findings overlap, the type earlier in PRIORITY keeps the text (an e-mail's digits are no phone
number; an IBAN's digits are no card). Redaction puts [EMAIL], [PHONE], [CARD], [IP] or [IBAN] in place of
each finding. Found values are shown masked everywhere (`mask`): a report never prints a whole card number or address.
"""
from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass

TYPES = ("EMAIL", "PHONE", "CARD", "IP", "IBAN")
PRIORITY = ("EMAIL", "IBAN", "CARD", "PHONE", "IP")  # who keeps an overlapping stretch of text

_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9_%+-](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"
                    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w@-])")

# Phone numbers. Lookarounds keep a match from starting or ending inside a longer run of digits, dashes,
# dots or a word (ISBNs such as 978-3-16-148410-0 and dates such as 2024-01-15 never offer a full match), or
# right after a digit and a ':' (the minutes of a time: 09:00 0930 1000; "Phone:(401) 278-9186" and
# "tel:123-456-7890" are phone numbers).
# The phone, card and IPv4 expressions start with what a match must start with (a literal, or a lookahead for
# a digit), so the regular expression engine skips ahead to candidates instead of trying the lookbehinds at
# every character (find_pii over ShareGPT's 17,293 chats: 6.9 s instead of 10.4); _edge_l(literal) is the left
# edge checked after that literal.
_EDGE_L, _EDGE_R = r"(?=[\d(])(?<![\w+.\-/])(?<!\d[ .\-:])", r"(?![\w/]|[ .\-]\d)"


def _edge_l(literal: str) -> str:
    return rf"{literal}(?<![\w+.\-/]{literal})(?<!\d[ .\-:]{literal})"


_INTERNATIONAL = re.compile(_edge_l(r"\+") + r"\d{1,3}(?:[ .\-]?\(\d{1,4}\))?(?:[ .\-]?\d{1,5}){2,6}" + _EDGE_R)
# 00 for the +: the country code stands alone (0044 20 ...) and the groups are separated, as zero-padded ids
# (0012 3456) and runs of numbers are written that way too; the country code is checked (COUNTRY_CODES).
_INTERNATIONAL_00 = re.compile(_edge_l("00") + r"([1-9]\d{0,2})[ .\-][1-9]\d{0,4}(?:[ .\-]\d{1,5}){1,5}" + _EDGE_R)
_NATIONAL = re.compile(_EDGE_L + r"(?:"
                       r"(?:[18][ .\-]?)?\((?:\d{3}|0\d{1,4})\)[ .\-]?\d{3,4}[ .\-]\d{3,5}"  # (555) 123-4567
                       r"|(?:[18][ .\-]?)?\(\d{3,5}\)[ .\-]?\d{3}([ .\-])\d{2}\1\d{2}"  # 8 (495) 123-45-67
                       r"|(?:1[ .\-])?\d{3}([ .\-])\d{3}\2\d{4}"  # 555-123-4567, 555 123 4567, 1-800-555-0199
                       r"|(?P<trunk>0[1-9]\d{0,3})(?:"  # a trunk 0 and an area code, then
                       r"([ \-])\d{3,4}\4\d{3,4}"  # two groups: 020 7946 0958, 030-1234-5678
                       r"|([ .\-])\d{2}(?:\5\d{2}){3}"  # pairs: 06 12 34 56 78
                       r"|[ /\-]\d{5,8})"  # one block: 07700 900123, 030 12345678, 089/1234567
                       r")" + _EDGE_R)
_PERIOD = re.compile(r"(?:0[1-9]|1[0-2])[ .\-/](?:19|20)\d\d(?!\d)")  # a month and a year: 01 1990, 01-2024
# E.164 country codes: 1 and 7, the two-digit codes, and the zones of three-digit codes (their first two digits)
COUNTRY_CODES = {"1", "7", "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45",
                 "46", "47", "48", "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63",
                 "64", "65", "66", "81", "82", "84", "86", "90", "91", "92", "93", "94", "95", "98"}
THREE_DIGIT_ZONES = {"21", "22", "23", "24", "25", "26", "29", "35", "37", "38", "42", "50", "59", "67", "68",
                     "69", "80", "85", "87", "88", "96", "97", "99"}

_CARD = re.compile(r"(?=\d)(?<![\w.,\-])(?<!\d[ \-])"
                   r"(?:\d{13,19}|\d{4}(?:([ \-])\d{4}){2}\1\d{1,7}|\d{4}([ \-])\d{6}\2\d{5})(?![\w]|[.,\- ]\d)")
# Card networks: (first digits as a range of prefixes of one length, card lengths).
NETWORKS = {"Visa": [((4, 4), (13, 16, 19))], "Mastercard": [((51, 55), (16,)), ((2221, 2720), (16,))],
            "American Express": [((34, 34), (15,)), ((37, 37), (15,))],
            "Discover": [((6011, 6011), range(16, 20)), ((644, 649), range(16, 20)), ((65, 65), range(16, 20))],
            "Diners Club": [((300, 305), range(14, 20)), ((36, 36), range(14, 20)), ((38, 39), range(16, 20))],
            "JCB": [((3528, 3589), range(16, 20))], "UnionPay": [((62, 62), range(16, 20))]}

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?=\d)(?<![\w.\-]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w\-]|\.\d)")
# Programs whose versions come as four numbers (Python 3.10.12.1, Windows 10.0.19.1): a dotted quad right after
# one of them, or after a word that says "version", is no address. Names that also name servers (node, nginx,
# mysql) are not here: "node 10.0.0.5" is a machine.
VERSION_WORDS = ("v", "version", "ver", "release", "build", "rev", "python", "java", "ruby", "perl", "php",
                 "rust", "gcc", "clang", "llvm", "cuda", "kernel", "ubuntu", "debian", "windows", "macos", "ios",
                 "android", "chrome", "firefox", "safari", "openssl", "torch", "pytorch", "tensorflow", "numpy",
                 "pip", "npm")
_VERSION_BEFORE = re.compile(r"(?i)\b(?:" + "|".join(VERSION_WORDS) + r")\.?\s*$")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")

_IBAN = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2})(\d{2})((?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?)(?![A-Za-z0-9])")
# IBAN lengths of the countries in the SWIFT IBAN registry.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29,
    "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24,
    "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
    "YE": 30,
}


@dataclass(frozen=True)
class Finding:
    """One piece of personal data: its type, where it is in the text (end exclusive) and the text itself."""

    kind: str
    start: int
    end: int
    value: str


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a digit string (card numbers): every second digit from the right doubled."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(compact: str) -> bool:
    """An IBAN without spaces: a registry country, its length, and ISO 13616's mod-97 remainder of 1."""
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _emails(text: str):
    if "@" not in text:
        return
    for m in _EMAIL.finditer(text):
        yield m.start(), m.end()


def _phones(text: str):
    for m in _INTERNATIONAL.finditer(text):
        digits = len(_digits(m.group()))
        if 8 <= digits <= 15 and (digits >= 11 or not m.group()[1:].isdigit()):
            yield m.start(), m.end()
    for m in _INTERNATIONAL_00.finditer(text):
        if country_code_ok(m.group(1)) and 8 <= len(_digits(m.group())) - 2 <= 15:
            yield m.start(), m.end()
    for m in _NATIONAL.finditer(text):
        if 10 <= len(_digits(m.group())) <= 12 and not (m.group("trunk") and _PERIOD.match(m.group())):
            yield m.start(), m.end()


def country_code_ok(code: str) -> bool:
    """A country code of the ITU's E.164 plan: 1, 7, an assigned two-digit code, or three digits in a zone of
    three-digit codes (COUNTRY_CODES, THREE_DIGIT_ZONES)."""
    return code in COUNTRY_CODES or (len(code) == 3 and code[:2] in THREE_DIGIT_ZONES)


def card_network(digits: str) -> str | None:
    """The network whose prefixes and lengths a card number has (NETWORKS), or None."""
    for name, rules in NETWORKS.items():
        for (low, high), lengths in rules:
            if len(digits) in lengths and low <= int(digits[:len(str(low))]) <= high:
                return name
    return None


def _cards(text: str):
    for m in _CARD.finditer(text):
        digits = _digits(m.group())
        if card_network(digits) and luhn_ok(digits):
            yield m.start(), m.end()


def _names_a_machine(address) -> bool:
    """False for addresses that name no machine: unspecified (0.0.0.0, ::), loopback (127.x.x.x, ::1), and
    netmasks (255.255.255.0: a run of 1 bits then 0 bits)."""
    if address.is_unspecified or address.is_loopback:
        return False
    bits = f"{int(address):0{address.max_prefixlen}b}"
    return not (bits.startswith("1") and "01" not in bits)


def _ips(text: str):
    for m in _IPV4.finditer(text):
        if (not _VERSION_BEFORE.search(text, max(0, m.start() - 16), m.start())
                and _names_a_machine(ipaddress.IPv4Address(m.group()))):
            yield m.start(), m.end()
    if ":" not in text:
        return
    for m in _IPV6.finditer(text):
        candidate = m.group()
        groups = [g for g in candidate.split(":") if g]
        hex_letter = re.search(r"[A-Fa-f]", candidate) is not None
        if (len(groups) < 2 or not re.search(r"\d", candidate) or ("::" not in candidate and not hex_letter)
                or (not hex_letter and len(groups) < 3)):
            continue  # Python's [::3] and a[1::2], Julia's f::A, a ratio 3::1, a time (12:30:45): no address
        try:
            address = ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        if _names_a_machine(address):
            yield m.start(), m.end()


def _ibans(text: str):
    for m in _IBAN.finditer(text):
        if iban_ok(m.group().replace(" ", "")):
            yield m.start(), m.end()


DETECTORS = {"EMAIL": _emails, "PHONE": _phones, "CARD": _cards, "IP": _ips, "IBAN": _ibans}


def find_pii(text: str) -> list[Finding]:
    """Every finding in `text`, in reading order; where two overlap, the type earlier in PRIORITY keeps it."""
    if not _may_hold_pii(text):
        return []
    taken: list[Finding] = []
    for kind in PRIORITY:
        for start, end in DETECTORS[kind](text):
            if all(end <= f.start or start >= f.end for f in taken):
                taken.append(Finding(kind, start, end, text[start:end]))
    return sorted(taken, key=lambda f: f.start)


def _may_hold_pii(text: str) -> bool:
    """A cheap pre-test: every detector needs a digit or an '@' (most texts of most data sets have neither
    the '@' nor a run of digits, and skip the regular expressions)."""
    return "@" in text or _DIGIT_RUN.search(text) is not None


_DIGIT_RUN = re.compile(r"\d{3}|\d[ .\-:]\d|::")


def placeholder(kind: str) -> str:
    """The text that replaces a finding of `kind`: [EMAIL], [PHONE], [CARD], [IP], [IBAN]."""
    return f"[{kind}]"


def redact(text: str, counts: Counter | None = None) -> str:
    """`text` with every finding replaced by its typed placeholder; `counts` (if given) gains one per finding."""
    findings = find_pii(text)
    if not findings:
        return text
    out, at = [], 0
    for f in findings:
        out.append(text[at:f.start])
        out.append(placeholder(f.kind))
        at = f.end
        if counts is not None:
            counts[f.kind] += 1
    out.append(text[at:])
    return "".join(out)


def mask(finding: Finding) -> str:
    """A finding as a report may show it: enough to recognise the kind of thing, never the whole value.

    j***@e***.com; phone and card numbers keep their separators and last digits (two of a phone, four of a card);
    IPv4 keeps its first part (10.*.*.*), IPv6 its first group; an IBAN its country and last two characters.
    """
    v = finding.value
    if finding.kind == "EMAIL":
        local, _, domain = v.partition("@")
        host, _, tld = domain.rpartition(".")
        return f"{local[:1]}***@{host[:1]}***.{tld}"
    if finding.kind in ("PHONE", "CARD"):
        keep = 2 if finding.kind == "PHONE" else 4
        total = sum(ch.isdigit() for ch in v)
        out, seen = [], 0
        for ch in v:
            if ch.isdigit():
                seen += 1
                out.append(ch if seen > total - keep else "*")
            else:
                out.append(ch)
        return "".join(out)
    if finding.kind == "IP":
        if ":" in v:
            return v.split(":", 1)[0] + ":***"
        return v.split(".", 1)[0] + ".*.*.*"
    compact = v.replace(" ", "")
    return compact[:2] + "*" * (len(compact) - 4) + compact[-2:]
