"""The built-in PII and secret rules: one regex per rule plus a validator.

Every pattern is written in the syntax shared by RE2 (pyarrow.compute) and
Python ``re``: no lookarounds, no backreferences, no global inline flags (only
scoped ``(?i:...)``), explicit ASCII classes instead of ``\\d``/``\\w``/``\\s``.
The same alternation therefore finds the same leftmost-first candidates in both
engines; RE2 finds them over whole columns, Python only re-matches each
candidate at its known offset and runs the validator (Luhn, mod-97, address
parsing, right-hand context, JSON escapes) that a regex cannot express.

A rule's pattern is ``LEFT + BODY``: ``LEFT`` is the left context (start of
text, a non-word character, or the tail of a JSON escape such as ``\\n``), so a
value never starts in the middle of a word or right after a backslash. ``BODY``
names the part to replace with ``(?P<v>...)`` (several ``v``, ``v2``, ... groups
for alternative forms; the first that matched is replaced).

Pure data and pure functions; importable anywhere, no state.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import json
import re
import urllib.parse
from collections.abc import Callable

from tracesieve.processors import pii_context as ctx

#: Every placeholder type DESIGN.md names. The last four come from the context rules of
#: :mod:`.pii_context` (only where a keyword, key or street suffix says what the value is).
KNOWN_TYPES = (
    "EMAIL", "PHONE", "CARD", "SSN", "IBAN", "IP", "MAC", "URL_CREDENTIALS", "JWT",
    "BEARER_TOKEN", "PRIVATE_KEY", "API_KEY", "SECRET", "PERSON", "ADDRESS", "DOB", "PASSPORT",
)

# Left contexts. ``\\[nrt]`` lets a value start right after a JSON escape
# (``"hi\nbob@x.com"``), and ``\\uXXXX`` after an escaped character: Go's encoding/json writes
# ``<bob@x.com>`` as ``\u003cbob@x.com\u003e``, Python's ensure_ascii ``邮箱：bob@x.com`` as
# ``\u90ae\u7bb1\uff1abob@x.com``; the escape's hex digits are no word the value is glued to.
# A bare backslash is never a left context.
_ESC = r"\\(?:[nrt]|u[0-9A-Fa-f]{4})"
LEFT = rf"(?:^|[^A-Za-z0-9_\\]|{_ESC})"              # words: keys, tokens
# Local parts may hold accented Latin letters (josé@, émilie@), also as JSON \u escapes (ensure_ascii).
_LATIN = "À-ÖØ-öø-ɏ"
_LATIN_ESCAPE = r"\\+u(?:00[c-fC-F][0-9a-fA-F]|0[12][0-9a-fA-F]{2})"
LEFT_EMAIL = rf"(?:^|[^A-Za-z0-9_.%+{_LATIN}\\-]|{_ESC})"
LEFT_NUM = rf"(?:^|[^A-Za-z0-9_.\\-]|{_ESC})"         # numbers: not inside ORD-2024-1, v1.2.3.4, 2024-08-06
LEFT_HEX = rf"(?:^|[^A-Za-z0-9_.:\\-]|{_ESC})"       # hex-and-colon runs

# ``key = value`` separators, also inside JSON and JSON-in-JSON (``\"key\": \"v\"``).
_Q = r"""(?:\\*["'])?"""
# An opening ``[`` may follow: captured HTTP headers are lists (``"authorization": ["Bearer ..."]``).
SEP = rf"{_Q}[ \t]*[:=][ \t]*(?:\[[ \t]*)?"
# A value: double-quoted (escapes kept whole, never ends inside one), single-quoted, or bare.
_VALUE = (
    r'''(?:\\*"(?P<v>(?:[^"\\]|\\[^"\\])+)'''
    r"""|'(?P<v2>[^'"\\]+)"""
    r"""|(?P<v3>(?:[()]{0,3}[^ \t\r\n"'\\,;&<>(){}\[\]]+|[()]{0,2}&[&()]{0,2}[^ \t\r\n"'\\,;&<>(){}\[\]=]+)"""
    r"""(?:[,;&<>(){}\[\]]{1,3}[^ \t\r\n"'\\,;&<>(){}\[\]=]+)*))"""
)
# A bare value runs on through punctuation that passwords contain (``Tr0ub4dor&3``, ``hello;world``,
# ``xH9NMbZ&(2``) as long as no key follows (``&user=``): half a password is still a password. It may
# open with a bracket or ``&`` (``)0I0kp3q@S``, ``&4Tvq@+c(9``: one Faker password in ten), but an ``&``
# then takes no ``=`` in its first run: ``?password=&user=bob`` is an empty password and the next key.
_SECRET_KEYWORDS = (
    r"(?i:password|passwd|passphrase|passcode|pwd|secret|client[_-]?secret|secret[_-]?key|api[_-]?key|apikey"
    r"|account[_-]?key|access[_-]?key|subscription[_-]?key"
    r"|access[_-]?token|auth[_-]?token|refresh[_-]?token|session[_-]?token|id[_-]?token|token"
    r"|private[_-]?key|credentials?"
    # an Azure SAS URL's signature (``?sv=...&sig=...``): the only secret part of a URL that grants access
    r"|sig)"
)

# What a key may hold before the word that makes it a secret's key (``DB_PASSWORD``, ``azure.storage.account_key``).
# Bounded: each try ran to the end of a long run of key characters and back looking for the word, so
# 20 KB of "eyJa." took 7 s (quadratic) of a span worker.
_KEY_HEAD = r"[A-Za-z0-9_.-]{0,128}"
# A key is a run of key characters (its head and its keyword) that a separator ends. Checked first, in one
# possessive sweep: otherwise every start in a long run of key characters ("1234-1234-...", a base64 or
# hex blob, "SG.SG.") backed over up to 128 characters trying each keyword at each, ~15 us a start, and
# 1 MiB of such a run held a span worker for 15-20 s.
_KEY_THEN_SEP = r"(?=[A-Za-z0-9_.-]{1,160}+" + _Q + r"[ \t]*[:=])"

_API_KEY_BODY = (
    r"(?P<v>sk-(?:proj-|ant-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}"
    r"|(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|AIPA)[A-Z0-9]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{36,}"
    r"|github_pat_[A-Za-z0-9_]{22,}"
    r"|xox[abprse]-[A-Za-z0-9-]{10,}|xapp-[0-9]-[A-Za-z0-9-]{10,}"
    r"|(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}|whsec_[A-Za-z0-9]{24,}"
    r"|AIza[0-9A-Za-z_-]{35}|ya29\.[0-9A-Za-z_-]{20,}"     # Google: API key, OAuth access token
    r"|pypi-AgE[A-Za-z0-9_-]{50,}"                        # a PyPI upload token (a macaroon)
    r"|hf_[A-Za-z0-9]{30,}"
    r"|glpat-[A-Za-z0-9_-]{20,}"
    r"|SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{30,}"
    r"|npm_[A-Za-z0-9]{36,}"
    r"|gsk_[A-Za-z0-9]{40,}|xai-[A-Za-z0-9]{40,})"
)
API_KEY_RE = re.compile(_API_KEY_BODY.replace("(?P<v>", "(?:") + r"\Z", re.ASCII)
_JWT_BODY = r"(?P<v>eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*)"
JWT_RE = re.compile(_JWT_BODY.replace("(?P<v>", "(?:") + r"\Z", re.ASCII)

# PEM (RSA, EC, OPENSSH, PKCS#8, ENCRYPTED) and OpenPGP armor (``PRIVATE KEY BLOCK``). A key pasted
# without its END line runs on over base64 and armor headers (``Version: ...``, ``DEK-Info: ...``).
_PEM_BEGIN = r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
_PEM_END = r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
_PEM_VALUE = (rf"{_PEM_BEGIN}(?:[^-\"\\]|\\[^\"]|-[^-\"\\])*?{_PEM_END}"
              rf"|{_PEM_BEGIN}(?:[A-Za-z][A-Za-z-]*:[ ][^\r\n\"\\<>]*|[A-Za-z0-9+/=\r\n]|\\[nr])*")
_PEM_RE = re.compile(_PEM_VALUE)


Validator = Callable[[str, int, int, bool], "tuple[str, int, int] | None"]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One alternative of the combined pattern. ``validate(text, start, end, json_text)``
    returns the (type, start, end) to replace -- possibly narrowed or re-typed -- or None."""

    type: str
    pattern: str
    validate: Validator | None = None
    #: RE2 prefilter that fires wherever this rule can *accept* a value, starting at the value
    #: or right after a run of ``BACK_CHARS`` that ends where the value's key/local part ends.
    trigger: str = ""


# --------------------------------------------------------------------------- validators

def _word(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch == "_")


def _free_right(text: str, end: int) -> bool:
    """True when the value is not glued to a following word character."""
    return end >= len(text) or not _word(text[end])


def _free_right_num(text: str, end: int) -> bool:
    """Also not followed by ``.5``/``-5`` (part of a longer number or date)."""
    if not _free_right(text, end):
        return False
    if end + 1 < len(text) and text[end] in ".-" and text[end + 1].isdigit():
        return False
    return True


def _bounded(type_: str) -> Validator:
    def check(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
        return (type_, s, e) if _free_right(text, e) else None
    return check


def _aws_key_pair(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    """The key id and its secret; the key id alone when the 40 characters run on (then no secret)."""
    return ("API_KEY", s, e) if _free_right(text, e) else ("API_KEY", s, s + 20)


def _aws_secret_said(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    """A 40-character value after "secret (access) key" is a secret access key when it looks generated
    (upper and lower case, a digit or a ``/`` ``+``) and is not the start of a longer run."""
    val = text[s:e]
    if e < len(text) and (_word(text[e]) or text[e] in "/+="):
        return None
    if not (any(c.isupper() for c in val) and any(c.islower() for c in val)
            and any(c.isdigit() or c in "/+" for c in val)):
        return None
    return ("API_KEY", s, e)


_PROSE_CREDENTIAL = r"(?i:api|access|auth|client|secret|session|refresh)[ \t_-]?(?i:key|token|secret)"


def _credential_said(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    """A credential named in prose: a value of letters and digits, 16 characters or more, that no longer
    run continues (so "the API key is 32 characters long" or "is expired" stay); typed as an assignment's."""
    while e - s > 16 and text[e - 1] in ".,":
        e -= 1                                           # the sentence's full stop
    val = text[s:e]
    if e < len(text) and _word(text[e]) or not any(c.isdigit() for c in val) or not any(c.isalpha() for c in val):
        return None
    if _an_identifier(val):
        return None
    return _secret(text, s, e, json_text)


_IDENTIFIER_PART = re.compile(r"[a-z]+|[A-Z]+|[0-9]+|[A-Za-z0-9]{1,3}")


def _an_identifier(val: str) -> bool:
    """A name made of words and numbers (``rotation_policy_2024_v2``, ``KEY_ROTATION_90_DAYS``) is what a
    key is called, not a key: a generated value has a part mixing letters with digits or cases (and a
    capitalised word, ``Production-Secret-2024``, may be a secret someone chose, so it is redacted)."""
    return all(_IDENTIFIER_PART.fullmatch(part) for part in re.split(r"[_./~+=-]+", val) if part)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_prefix_ok(d: str) -> bool:
    n = len(d)
    if d[0] == "4":
        return n in (13, 16, 19)                                  # Visa
    p2, p4 = int(d[:2]), int(d[:4])
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16                                            # Mastercard
    if p2 in (34, 37):
        return n == 15                                            # Amex
    if p2 in (36, 38, 39) or 300 <= int(d[:3]) <= 305:
        return 14 <= n <= 19                                      # Diners
    if p4 == 6011 or p2 == 65 or 644 <= int(d[:3]) <= 649 or p2 == 62:
        return 16 <= n <= 19                                      # Discover, UnionPay
    if p2 == 35:
        return 16 <= n <= 19            # JCB (3528-3589 issued; test generators such as Faker use all of 35xx)
    if p4 in (1800, 2131):
        return n == 15                                            # JCB's 15-digit cards
    if p2 == 50 or 56 <= p2 <= 69 or d.startswith("0604"):
        return 12 <= n <= 19                                      # Maestro
    return False


# A card keyword right before a value (``card 5038 3079 8685``, ``"card_number": "503830798685"``,
# ``Maestro: ...``) or an expiry date right after it (``503830798685 11/31``, as a receipt or Faker's
# credit_card_full writes it). Twelve digits are a card only there: AWS account ids and other 12-digit
# ids are as often Luhn-valid with a Maestro prefix (1 in 70) and are never written so.
_CARD_KEYWORD_BEFORE = re.compile(
    r"(?<![A-Za-z0-9])(?i:card|cc|pan|maestro)(?:[ _.-]?(?i:number|num|no|nr)\.?)?(?:[ ]+(?i:is))?"
    r"""[ \t:=#"'\\]{0,8}\Z""")
_CARD_EXPIRY_AFTER = re.compile(r"[ ]+(?:0[1-9]|1[0-2])/(?:[0-9]{2}){1,2}(?![0-9])")


def _short_card_context(text: str, s: int, e: int) -> bool:
    """Whether the 12 digits at ``text[s:e]`` are written as a card (see _CARD_KEYWORD_BEFORE)."""
    return (_CARD_EXPIRY_AFTER.match(text, e) is not None
            or _CARD_KEYWORD_BEFORE.search(text, max(0, s - 40), s) is not None)


_CARD_GROUPS = {(4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 6, 5), (4, 6, 4), (4, 4, 4, 2), (4, 4, 4, 3), (4, 4, 4, 1)}


# What people put between a card's groups: a blank, a dash, a dot ("4111.1111.1111.1111"), or the no-break
# and thin spaces a web page or a word processor puts there (copied from a receipt, an e-mail). A dot
# counts only between groups of a card's shape (_CARD_GROUPS): a decimal such as 3.141592653589793 never is.
_CARD_SEPS = " -.\u00a0\u2007\u2009\u202f"
_CARD_SEP = "[" + _CARD_SEPS.replace("-", "") + "-]"                     # the dash last: no range
_CARD_RUN = re.compile(rf"[0-9](?:{_CARD_SEP}?[0-9]){{11,18}}")


def _card(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    found = _card_at(text, s, e)
    if found is not None:
        return found
    # A number before the card, one space apart ("2024 4111 1111 1111 1111", "1 4111...", a CSV of
    # blanks): the digit run began at it, and no prefix of the run is a card. Try from each later
    # group, with the run re-read from there (the first read stopped at 19 digits).
    for i in range(s + 1, e):
        if text[i - 1] == " " and text[i].isdigit():
            run = _CARD_RUN.match(text, i)
            if run is None:
                return None
            found = _card_at(text, i, run.end())
            if found is not None:
                return found
    return None


def _card_at(text: str, s: int, e: int) -> tuple[str, int, int] | None:
    raw = text[s:e]
    seps = {c for c in raw if c in _CARD_SEPS}
    if len(seps) > 1:
        return None
    if seps:
        groups = raw.split(seps.pop())
        # a longer run of groups (card followed by a year, ...): keep the longest valid prefix
        for k in range(len(groups), 1, -1):
            shape = tuple(len(g) for g in groups[:k])
            end = s + len(" ".join(groups[:k]))
            if shape in _CARD_GROUPS or shape == (4, 4, 4) and _short_card_context(text, s, end):
                digits = "".join(groups[:k])
                if _card_prefix_ok(digits) and luhn_ok(digits) and _free_right_num(text, end):
                    return ("CARD", s, end)
        # an ungrouped card followed by its expiry or security code ("4111111111111111 12/25"): the first group
        raw, e = groups[0], s + len(groups[0])
    if not (12 <= len(raw) <= 19) or not _free_right_num(text, e):
        return None
    if len(raw) == 12 and not _short_card_context(text, s, e):
        return None
    return ("CARD", s, e) if _card_prefix_ok(raw) and luhn_ok(raw) else None


def _ssn(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    area, group, serial = text[s:e].split("-")
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return None
    return ("SSN", s, e) if _free_right_num(text, e) else None


def _phone(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    raw = text[s:e]
    n = sum(c.isdigit() for c in raw)
    if raw.startswith("+") or raw.startswith("00"):
        if not 8 <= n <= 15:
            return None
    elif n not in (10, 11):
        return None
    e = ctx.phone_extension_end(text, e)
    return ("PHONE", s, e) if _free_right_num(text, e) else None


def _phone_encoded(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    """``%2B14155550132`` / ``%2B44%2020%207946%200958`` in a URL: the digits of the decoded number."""
    n = sum(c.isdigit() for c in urllib.parse.unquote(text[s:e]))
    return ("PHONE", s, e) if 8 <= n <= 15 and _free_right_num(text, e) else None


_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24,
    "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21,
    "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21,
    "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30,
    "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}


def iban_ok(compact: str, *, labelled: bool = False) -> bool:
    """Mod-97 and, unless an IBAN label or key says what it is, the country's length."""
    compact = compact.upper()              # a labelled IBAN may be typed in lower case
    want = _IBAN_LENGTHS.get(compact[:2])
    if want is not None and len(compact) != want and not labelled:
        return False
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _iban_labelled(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    """After ``IBAN:`` or as an ``iban`` key's value the country's length is not asked: Faker's zh_CN
    iban() writes 21-character GB numbers (``GB74ARRT9579032892184``) that pass mod-97."""
    return _iban(text, s, e, json_text, labelled=True)


def _iban(text: str, s: int, e: int, json_text: bool, labelled: bool = False) -> tuple[str, int, int] | None:
    raw = text[s:e]
    # trailing upper-case words may have been swallowed: try the longest prefix that validates
    cut = e
    while cut - s >= 15:
        compact = text[s:cut].replace(" ", "")
        if iban_ok(compact, labelled=labelled) and _free_right(text, cut):
            return ("IBAN", s, cut)
        nxt = text.rfind(" ", s, cut)
        if nxt <= s or " " not in raw:
            break
        cut = nxt
    return None


def _ipv4(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    parts = text[s:e].split(".")
    if len(parts) != 4 or any(int(p) > 255 for p in parts):
        return None
    return ("IP", s, e) if _free_right(text, e) else None


def _ipv6(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    raw = text[s:e]
    if sum(c not in ":." for c in raw) < 4 or raw.count(":") < 2:
        return None
    try:
        ipaddress.IPv6Address(raw)
    except ValueError:
        return None
    if e < len(text) and (_word(text[e]) or text[e] == ":"):
        port = re.match(r":[0-9]{1,5}(?![0-9A-Za-z:])", text[e:e + 7])     # written host:port without brackets
        if port is None:
            return None
    return ("IP", s, e)


def _mac(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    raw = text[s:e]
    if "." in raw:                                       # Cisco's dotted form, 001a.2b3c.4d5e
        # with a hex letter (all but 0.4% of addresses): "1733.5800.0012" is a number, not a MAC
        if not any(c.isalpha() for c in raw):
            return None
        if e < len(text) and (_word(text[e]) or text[e] == "." and e + 1 < len(text) and _word(text[e + 1])):
            return None
        return ("MAC", s, e)
    if len(raw) != 17 or len({raw[i] for i in range(2, 17, 3)}) != 1:
        return None
    if e < len(text) and (_word(text[e]) or text[e] in ":-"):
        return None
    return ("MAC", s, e)


_FILE_TLDS = frozenset(
    "png jpg jpeg gif svg webp ico bmp js mjs ts tsx jsx css scss py json yaml yml md txt html htm "
    "xml csv log lock toml ini cfg sh zip gz tar pdf".split())


def _email(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    tld = text[text.rfind(".", s, e) + 1:e].lower()
    if tld in _FILE_TLDS:
        return None
    return ("EMAIL", s, e) if _free_right(text, e) else None


def _jwt(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    head = text[s:text.index(".", s)]
    try:
        doc = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(doc, dict):
        return None
    return ("JWT", s, e) if _free_right(text, e) else None


def _bearer_loose(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    """``Bearer <token>`` without an Authorization header: only token-looking values."""
    val = text[s:e]
    if len(val) < 12 or not any(c.isdigit() for c in val) or not _free_right(text, e):
        return None
    return ("BEARER_TOKEN", s, e)


_NOT_SECRETS = frozenset({"null", "none", "true", "false", "undefined", "nil", "redacted", "[redacted]", "***",
                          # an eval's verdict under a ``pass`` key ("pass": "yes"), never a password
                          "yes", "no", "ok", "pass", "passed", "fail", "failed"})


def _secret(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    if e < len(text) and text[e] == "=":                 # a bare value ran into the next key (abc&user=bob)
        cut = max(text.rfind(c, s, e) for c in ",;&<>(){}[]")
        if cut > s:
            e = cut
        elif cut == s:                                   # no value, then the next key (password=&user=bob)
            return None
    while e - s > 1 and text[e - 1] in ".," and (e == len(text) or not _word(text[e])):
        e -= 1                                           # sentence punctuation after a bare value
    val = text[s:e]
    low = val.lower()
    if low in _NOT_SECRETS or val.startswith(("<", "${", "***", "{{")) or set(val) <= {"*", "x", "X", "•"}:
        return None
    if val.isdigit() and len(val) < 6:
        return None                                      # counts and flags, not credentials
    if text.startswith("-----BEGIN ", s):              # private_key: <PEM>, a service account's JSON: the whole block
        pem = _PEM_RE.match(text, s)
        return ("PRIVATE_KEY", s, pem.end()) if pem else ("SECRET", s, e)
    if API_KEY_RE.match(val):
        return ("API_KEY", s, e)
    if JWT_RE.match(val):
        return ("JWT", s, e)
    return ("SECRET", s, e)


def _secret_said(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    """``my password is X`` in prose: only a value that looks made up (a letter and a digit or a
    symbol) or 6+ digits, so "the password is incorrect" or "is 8 characters long" stay."""
    val = text[s:e].rstrip(".,!?").strip("()&")       # "the password is (optional)" is no password
    if not (val.isdigit() and len(val) >= 6 or any(c.isalpha() for c in val) and any(not c.isalpha() for c in val)):
        return None
    return _secret(text, s, e, json_text)


def _cookie(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    """A Cookie / Set-Cookie header value: ``name=value`` pairs, the session tokens among them."""
    while e > s and text[e - 1] in " \t;":
        e -= 1
    return ("SECRET", s, e) if "=" in text[s:e] else None


def _url_creds(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    _, _, pw = text[s:e].partition(":")  # the user may be empty (redis://:password@host)
    return ("URL_CREDENTIALS", s, e) if pw else None


# --------------------------------------------------------------------------- the rules (order matters)

#: Leftmost-first: at one start position the first rule that matches wins, so
#: specific rules come before general ones (SSN and PHONE before CARD, MAC before IP, PHONE before IPv4).
#: Triggers are small RE2 patterns (literal anchors, no left context) whose DFA is
#: cheap to build per batch; each must fire wherever its rule can accept a value.
_HEX2 = "[0-9A-Fa-f]{2}"
_AUTH_TOKEN = r"(?:[A-Za-z0-9._~+/-]|%[0-9A-Fa-f]{2})+=*"     # token68, raw or URL-encoded
_SECRET_TRIGGER = (r"(?i:pass(?:word|wd|phrase|code)?|pwd|secret|key|token|credentials?|cookie|sig)"
                   + rf"(?:{SEP}|[ \t]+(?i:is)[ \t:])")
BUILTIN_RULES: tuple[Rule, ...] = (
    Rule("PRIVATE_KEY", LEFT + rf"(?P<v>{_PEM_VALUE})", trigger="-----BEGIN "),
    Rule("JWT", LEFT + _JWT_BODY, _jwt, trigger="eyJ"),
    # The blank after the scheme may be URL-encoded: ``OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20...``
    # (the form the OTel SDK reads), ``?authorization=Basic+...`` in a form-encoded query; so may the
    # token's own characters (``%2F``, ``%3D``).
    Rule("BEARER_TOKEN", LEFT + r"(?i:proxy-)?(?i:authorization)" + SEP + _Q
         + r"(?i:bearer|basic|token|digest)(?:[ ]+|%20|\+)(?P<v>" + _AUTH_TOKEN + ")",
         trigger="(?i:authorization)"),
    Rule("BEARER_TOKEN", LEFT + r"(?:Bearer|bearer|BEARER)(?:[ ]+|%20)(?P<v>" + _AUTH_TOKEN + ")", _bearer_loose,
         trigger="(?:Bearer|bearer|BEARER)(?: |%20)"),
    # The password runs to the last "@" before the host: people paste DSNs with a raw "@" in it
    # (``mongodb://admin:p@ssw0rd@db``), which RFC 3986 wants percent-encoded; stopping at the first
    # "@" stored "ssw0rd@db". Past its first "@" the password takes no "?", so a query after
    # the host (``redis://:pw@host?to=a@b.com``) is not read as part of it. The trigger still fires
    # at the password's first "@".
    Rule("URL_CREDENTIALS", LEFT + r"[A-Za-z][A-Za-z0-9+.-]{0,39}://(?P<v>[^/ \t\r\n:@\"\\<>]*:[^/ \t\r\n@\"\\<>]+(?:@[^/? \t\r\n@\"\\<>]+)*)@",
         _url_creds, trigger=r"://[^/ \t\r\n:@\"\\<>]*:[^/ \t\r\n@\"\\<>]+@"),
    Rule("API_KEY", LEFT + _KEY_HEAD + r"(?i:secret[_.-]?access[_.-]?key|aws[A-Za-z0-9_.-]{0,64}secret[A-Za-z0-9_.-]{0,64})"
         + SEP + _Q
         + r"(?P<v>[A-Za-z0-9/+=]{40})", _bounded("API_KEY"), trigger=r"(?i:aws)"),
    # ``pass`` as a whole key or a key's last segment (DB_PASS, SMTP_PASS, RABBITMQ_DEFAULT_PASS, "pass"),
    # never the end of a word (compass, bypass)
    Rule("SECRET", LEFT + _KEY_THEN_SEP + r"(?:" + _KEY_HEAD + r"(?:" + _SECRET_KEYWORDS + r"|[_.-](?i:pass))|(?i:pass))" + SEP + _VALUE,
         _secret, trigger=_SECRET_TRIGGER),
    # said rather than assigned: "my password is X" (its trigger is the assignments' one, sharing its automaton)
    Rule("SECRET", LEFT + r"(?i:pass(?:word|wd|phrase|code))[ \t]+(?i:is)(?:[ \t]*:[ \t]*|[ \t]+)" + _VALUE,
         _secret_said, trigger=_SECRET_TRIGGER),
    # a Cookie header (captured, or in a pasted "Copy as cURL"): the whole value, its session ids in it
    Rule("SECRET", LEFT + r"(?i:set-)?(?i:cookie)" + SEP + _Q + r"(?P<v>[^\"'\\\r\n]+)", _cookie,
         trigger=_SECRET_TRIGGER),
    # An AWS secret access key named in prose, as an agent answers ("your secret access key is wJalr...",
    # "AKIA..., secret key wJalr...", "Secret Access Key: wJalr..."): 40 characters of base64 with nothing of
    # their own to tell them by, and the spaces in the name keep the assignment rules above from seeing a key.
    # After those rules, so that ``secret: <40 characters>`` stays what it was.
    Rule("API_KEY", LEFT + r"(?i:secret)(?:[ _.-]?(?i:access))?(?:[ _.-]?(?i:key))?"
         + rf"(?:{SEP}|[ \t]+(?i:is)(?:[ \t]*:)?[ \t]+|[ \t]+){_Q}(?P<v>[A-Za-z0-9/+]{{40}})",
         _aws_secret_said, trigger=r"(?i:secret)(?:[ _.-]?(?i:access))?(?:[ _.-]?(?i:key))?[ \t:=\"'\\]"),
    # Any other credential named in prose: "your API key is 3f9a...", "Client secret: Xy7_...", "access token
    # a1b2..." (a space in the name, so no assignment rule above sees a key); only a value that looks generated.
    Rule("SECRET", LEFT + _PROSE_CREDENTIAL + r"(?:[ \t]+(?i:is)(?:[ \t]*:)?[ \t]+|[ \t]*[:=][ \t]*|[ \t]+)" + _Q
         + r"(?P<v>[A-Za-z0-9_~+/=.-]{16,512})", _credential_said, trigger=_PROSE_CREDENTIAL),
    # context rules: a keyword, key or street suffix says what the value is (see pii_context)
    Rule("DOB", ctx.DOB_PATTERN, ctx.dob, trigger=ctx.KEYWORD_TRIGGER),
    Rule("PASSPORT", ctx.PASSPORT_PATTERN, ctx.passport, trigger=ctx.KEYWORD_TRIGGER),
    Rule("IBAN", ctx.IBAN_LABELLED_PATTERN, _iban_labelled, trigger=ctx.KEYWORD_TRIGGER),
    Rule("SSN", ctx.SSN_PATTERN, ctx.ssn_digits, trigger=ctx.KEYWORD_TRIGGER),
    Rule("PHONE", ctx.PHONE_CONTEXT_PATTERN, ctx.phone_digits, trigger=ctx.PHONE_CONTEXT_TRIGGER),
    Rule("ADDRESS", ctx.ADDRESS_KEY_PATTERN, ctx.address_value, trigger=ctx.KEYWORD_TRIGGER),
    Rule("PERSON", ctx.PERSON_NAMED_PATTERN, ctx.person_named, trigger=ctx.PERSON_NAMED_TRIGGER),
    Rule("PERSON", ctx.PERSON_ROLE_PATTERN, ctx.person_of_role, trigger=ctx.PERSON_ROLE_TRIGGER),
    Rule("PERSON", ctx.PERSON_INTRO_PATTERN, ctx.person, trigger=ctx.PERSON_INTRO_TRIGGER),
    Rule("PERSON", ctx.PERSON_PAIR_PATTERN, ctx.person_pair, trigger=ctx.PERSON_PAIR_TRIGGER),
    Rule("ADDRESS", ctx.ADDRESS_PATTERN, ctx.address, trigger=ctx.ADDRESS_TRIGGER),
    # An AWS secret access key is 40 characters of base64 with nothing of its own to tell it by: found by
    # its key id right before it ("AKIA... wJalr...", "AKIA...:wJalr...", a CSV row), the pair one
    # placeholder (before the key id's own rule: the first rule matching at a position wins).
    Rule("API_KEY", LEFT + r"(?P<v>(?:AKIA|ASIA)[A-Z0-9]{16}(?:[ \t]*[:,;|][ \t]*|[ \t]+)[A-Za-z0-9/+]{40})",
         _aws_key_pair, trigger=r"(?:AKIA|ASIA)[A-Z0-9]{16}[ \t:,;|]"),
    Rule("API_KEY", LEFT + _API_KEY_BODY, _bounded("API_KEY"),
         trigger=r"sk-|AKIA|ASIA|AGPA|AIDA|AROA|ANPA|AIPA|gh[pousr]_|github_pat_|xox[abprse]-|[sr]k_(?:live|test)_"
                 r"|AIza|ya29\.|pypi-AgE|hf_|xapp-|whsec_|glpat-|SG\.|npm_|gsk_|xai-"),
    # An apostrophe inside the local part (o'brien@, mary.o'connor@) belongs to it; the value never
    # starts with one, so a quoted address ('bob@x.com') keeps its quote. A local part holds at most 64
    # characters (RFC 5321): unbounded, each try ran to the end of a long run ("%2B1" x 12,500 took 170 s).
    Rule("EMAIL", LEFT_EMAIL + rf"(?P<v>(?:[A-Za-z0-9._%+{_LATIN}-]|{_LATIN_ESCAPE})"
         + rf"(?:[A-Za-z0-9._%+{_LATIN}-]|{_LATIN_ESCAPE}|'[A-Za-z0-9{_LATIN}]){{0,63}}"
         # the domain may be internationalised too (info@münchen.de, a@b.exämple.com); its TLD is ASCII here
         + rf"@(?:[A-Za-z0-9{_LATIN}-]|{_LATIN_ESCAPE})+(?:\.(?:[A-Za-z0-9{_LATIN}-]|{_LATIN_ESCAPE})+)*"
         + r"\.[A-Za-z]{2,})", _email,
         trigger=rf"[A-Za-z0-9._%+{_LATIN}-]@(?:[A-Za-z0-9{_LATIN}-]|\\)"),
    # Percent-encoded in a URL (``?email=jane%40example.com``, ``/users/jane%40x.com/``, ``mailto:``), also
    # after another escape (``%3Demail%3Djane%40...`` in an encoded redirect URL): the local part holds no
    # escape but ``%2B`` (its ``+``), so the value starts right after the escape before it.
    Rule("EMAIL", rf"(?:{LEFT_EMAIL}|%[0-9A-Fa-f]{{2}})(?P<v>(?:[A-Za-z0-9._~+-]|%2[Bb]){{1,64}}"
         + r"%40[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})", _email,
         trigger=r"[A-Za-z0-9._~+-]%40[A-Za-z0-9-]"),
    Rule("IBAN", LEFT + r"(?P<v>[A-Z]{2}[0-9]{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?)", _iban,
         trigger=r"[A-Z]{2}[0-9]{2} ?[A-Z0-9]{4} ?[A-Z0-9]{4}"),
    Rule("MAC", LEFT_HEX + r"(?P<v>[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5,})", _mac,
         trigger=_HEX2 + ("[:-]" + _HEX2) * 5),
    Rule("IP", LEFT_HEX + r"(?P<v>(?:[0-9A-Fa-f]{1,4})?(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.[0-9]{1,3}){0,3})", _ipv6,
         trigger=r"::|(?::[0-9A-Fa-f]{1,4}){5}:"),
    Rule("SSN", LEFT_NUM + r"(?P<v>[0-9]{3}-[0-9]{2}-[0-9]{4})", _ssn, trigger="[0-9]{3}-[0-9]{2}-[0-9]{4}"),
    # The trigger leaves out the optional country code: "+1" fires ``\+[0-9]`` below and "1-"/"1."
    # are key characters the exact pass looks back over. The optional prefix cost RE2 ~15% of the
    # whole sanitizer; "1 555 123 4567" (space, no plus) keeps its "1 " in both paths alike.
    Rule("PHONE", LEFT_NUM + r"(?P<v>(?:\+1[ .-]?|1[.-])?(?:\([0-9]{3}\)[ ]?|[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4})",
         _phone, trigger=r"(?:\([0-9]{3}\) ?|[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}"),
    Rule("PHONE", LEFT_NUM + r"(?P<v>\+[0-9]{1,3}(?:[ .-]?(?:\([0-9]{1,4}\)|[0-9]{1,5})){1,6})", _phone,
         trigger=r"\+[0-9]"),
    # "00" is how most of the world dials "+" (0044 20 7946 0958, 0049-151-1234-5678): grouped by
    # separators, so a bare run of digits that happens to start with 00 (an invoice number) stays
    Rule("PHONE", LEFT_NUM + r"(?P<v>00[1-9][0-9]{0,2}(?:[ .-](?:\([0-9]{1,4}\)|[0-9]{1,5})){2,6})", _phone,
         trigger=r"00[1-9][0-9]{0,2}[ .-][0-9(]"),
    # the same, percent-encoded in a URL's query (``?phone=%2B44%2020%207946%200958``, ``+`` for a blank),
    # also after another escape (``tel%3A%2B1415...`` in an encoded link)
    Rule("PHONE", rf"(?:{LEFT_NUM}|%[0-9A-Fa-f]{{2}})"
         + r"(?P<v>%2[Bb][0-9]{1,3}(?:(?:%20|[+.-])?(?:%28[0-9]{1,4}%29|[0-9]{1,5})){1,6})",
         _phone_encoded, trigger=r"%2[Bb][0-9]"),
    # IPv4 after the phones: it takes "+" as its left context, so before them "+1.415.555.0132" at the
    # start of a value was the failed IP candidate "+1.415.555.013" and the phone was never tried.
    Rule("IP", LEFT_NUM + r"(?P<v>[0-9]{1,3}(?:\.[0-9]{1,3}){3,})", _ipv4,
         trigger=r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]"),
    # The trigger asks for 12+ digits (every accepted grouping: 4-4-4-4, 4-6-5, 4-6-4, 13-19 plain, 12 after
    # a card keyword) so the 8-11 digit runs of hex ids (chatcmpl-..., sess_...) never reach the exact pass.
    Rule("CARD", LEFT_NUM + rf"(?P<v>[0-9](?:{_CARD_SEP}?[0-9]){{11,18}})", _card,
         trigger=f"[0-9]{{4}}{_CARD_SEP}?[0-9]{{4}}[0-9]{{0,2}}{_CARD_SEP}?[0-9]{{4}}"),
    # Cisco's dotted MAC (001a.2b3c.4d5e), after the card: at one start the first rule that matches
    # wins, and "4111.1111.1111.1111" is a card whose first twelve digits have this shape.
    Rule("MAC", LEFT_HEX + r"(?P<v>[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4})", _mac,
         trigger=r"[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}"),
)

#: Characters a value (or its key, local part, scheme) may extend backwards over from
#: where its trigger fired: the exact pass tries the value start at the run's start too.
BACK_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.%+:-")

BUILTIN_TYPES = tuple(dict.fromkeys(r.type for r in BUILTIN_RULES))
