"""Context rules: PERSON, ADDRESS, DOB, PASSPORT, undashed SSN and plain-digit PHONE, found only where the text says what they are.

A name, a date or a 9-digit number is not PII by its shape, so these rules fire only on an
explicit context (a keyword before the value, a JSON key, a street suffix after a house
number) and their validators reject what ordinary agent text is full of: tool names,
model names, delivery dates, order numbers, titles. What each rule accepts:

* DOB -- a date (1990-01-31, 31/01/1990, 01/31/1990, 31.01.1990, January 31, 1990,
  31 Jan 1990) right after ``DOB``/``D.O.B.``/``date of birth``/``birth date``/``birthdate``/
  ``birthday``/``born``/``born on``, also as keys (``"dob": "1990-01-31"``, ``patient_dob=...``).
  Only the date is replaced.
* PASSPORT -- 6 to 9 letters/digits with at least 4 digits right after ``passport``
  (``passport no``, ``passport number``, ``passport #``, keys ``passport_number``, ...).
* SSN -- nine digits (or 3-2-4 with spaces) right after ``SSN`` / ``social security`` (``number``,
  ``no``, ``#``), also as keys (``patient_ssn``); the dashed form needs no context (pii_patterns).
* PHONE (plain digits) -- 8 to 15 digits (the area code maybe in brackets), optionally after ``+``, right after ``phone`` /
  ``telephone`` / ``tel`` / ``mobile`` / ``cell`` / ``fax`` (``number``, ``no``, ``#``), also as keys
  (``customer_phone``, ``contactPhone``) and as JSON numbers (``"phone": 4155550132``); numbers
  with separators are phones by their shape alone (pii_patterns).
* ADDRESS -- a house number (1-6 digits, at a word start) + 1-4 capitalised street-name
  words + a street suffix (Street/St, Avenue/Ave, Road/Rd, ...), with an optional unit
  (``Apt 4B``, ``Suite 200``, ``#12``) and an optional ``, City, ST 12345`` / ZIP / UK
  postcode tail; suffixes that are also ordinary words (Way, Place, Court, Drive, ...) need
  a unit, a tail or an address phrase before them. Also the quoted value of address keys
  (``address``, ``street_address``, ``shipping_address``, ``billing_address``, ...) when it
  holds a digit and a word. Not: a street without a number ("near Main Street").
* PERSON -- 1-3 capitalised name words after ``my name is``, ``Dear``, ``Sincerely,``/
  ``Regards,``/``Signed,``, a ``Name:`` label opening a line, clause or bracket, a qualified name label or key
  (``first_name``, ``last_name``, ``full_name``, ``customer_name``, ``contact_name``,
  ``patient_name``, ``surname``, ...), and the ``"name"`` key only inside a JSON object that
  looks like a person (a sibling key such as email/phone/dob/address/first_name, or a parent
  key such as customer/patient/contact/passenger). Tool, span and model names never qualify.
  After the weaker ``I'm`` / ``I am`` / ``Customer:`` (patient, client, cardholder, passenger,
  recipient) it takes two name words or a title: "I'm Sorry" and "Customer: Premium" stay. The
  value of a JSON role key (recipient, sender, author, owner, cardholder, ...) when it is all 2-5
  capitalised name words.

Patterns follow :mod:`.pii_patterns` (RE2-and-Python syntax, ``LEFT + ... (?P<v>...)``); regexes
used only inside validators may use Python-only lookarounds. Triggers are kept to a few literal
keywords (one shared set for DOB, PASSPORT and address keys): every RE2 state a trigger adds is
paid on every byte of every batch, and the sanitizer's budget is ~15% over the other rules.
A rule's regex carries the value's shape itself wherever a refused match could hide other PII.
"""

from __future__ import annotations

import datetime as _dt
import re

# Left contexts (copied here to keep the import one way: pii_patterns imports this module).
_ESC = r"\\(?:[nrt]|u[0-9A-Fa-f]{4})"
LEFT = rf"(?:^|[^A-Za-z0-9_\\]|{_ESC})"
LEFT_KEY = rf"(?:^|[^A-Za-z0-9_.\\-]|{_ESC})"       # not inside server.address, tool.name
_Q = r"""(?:\\*["'])?"""
SEP = rf"{_Q}[ \t]*[:=][ \t]*"
# Space between a label and its value: blanks, line breaks, and their JSON escapes (\n, and \\n in
# JSON inside JSON): "Date of birth:\n1984-07-23" is a form's label and value on two lines.
_GAP = r"(?:[ \t\r\n]|\\+[nrt])*"
_GAP1 = r"(?:[ \t\r\n]|\\+[nrt])+"
# keyword -> value: quotes of a JSON key/value, ``:``/``=``/``#``/``-``, "is"/"was"/"on"
# (No two gaps side by side: a long run of blanks must not be split between them in every way.)
_CONNECT = (r"""(?:\\*["'])?""" + _GAP + r"(?:(?i:is|was|on)" + _GAP1 + r")?(?:[:=#(-]" + _GAP
            + r""")?(?:\\*["']""" + _GAP + ")?")

# The rest of a key before its keyword (patient_dob, traveler.passport_number, customerName): at
# most two segments and a camel-case head, so the exact pass gives up at once on ids and digit runs.
_KEY_PREFIX = r"(?:[A-Za-z][A-Za-z0-9]*[_.-]){0,2}(?:[a-z][a-z0-9]*)?"
_UP = "A-ZÀ-ÖØ-Þ"
_LO = "a-zß-öø-ÿ"
_CAP = rf"(?:[{_UP}]|\\+u00[cdCD][0-9a-fA-F])"                  # a capital, also as \u00c9
_LOWER_RUN = rf"(?:[{_LO}]|\\+u00[e-fE-F][0-9a-fA-F])+"     # also \u00e9 of JSON written ensure_ascii

# --------------------------------------------------------------------------- DOB

_MONTH = (r"(?i:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
          r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)")
_YEAR = r"(?:1[89]|20)[0-9]{2}"
_DAY = r"[0-3]?[0-9](?i:st|nd|rd|th)?"
_DATE = (rf"(?P<v>{_YEAR}[-/.][01]?[0-9][-/.][0-3]?[0-9]"
         rf"|[0-3]?[0-9][-/.][0-3]?[0-9][-/.](?:{_YEAR}|[0-9]{{2}})"
         rf"|{_MONTH}\.?[ ]+{_DAY},?[ ]+{_YEAR}"
         rf"|{_DAY}[ ]+(?:of[ ]+)?{_MONTH}\.?,?[ ]+{_YEAR})")
# "date of birth" can also start at "birth": the trigger fires there and the exact pass looks back
# only over key characters, so the spaced form is matched from its last word.
_DOB_KEY = (_KEY_PREFIX + r"(?:(?i:d\.?o\.?b\.?|date[_.-]?of[_.-]?birth|birth[ _.-]?date|birthday)"
            r"|(?i:(?:date[ ]+of[ ]+)?birth|born))")
DOB_PATTERN = LEFT + _DOB_KEY + _CONNECT + _DATE

_MONTHS = {m: i + 1 for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])}
_NUM_DATE = re.compile(r"([0-9]+)[-/.]([0-9]+)[-/.]([0-9]+)\Z")


def _date_ok(raw: str) -> bool:
    """A real calendar date (either day/month order for numeric dates)."""
    m = _NUM_DATE.match(raw)
    if m:
        a, b, c = (int(x) for x in m.groups())
        if len(m.group(1)) == 4:
            candidates = [(a, b, c)]
        else:
            year = c if len(m.group(3)) == 4 else 1900 + c
            candidates = [(year, b, a), (year, a, b)]
    else:
        words = re.findall(r"[A-Za-z]+|[0-9]+", raw)
        nums = [int(w) for w in words if w.isdigit()]
        month = next((_MONTHS.get(w[:3].lower()) for w in words if w[:3].lower() in _MONTHS
                      and not w.isdigit() and w.lower() not in ("st", "nd", "rd", "th", "of")), None)
        if month is None or len(nums) != 2:
            return False
        candidates = [(nums[1], month, nums[0])] if nums[0] <= 31 else []
        if not candidates:
            return False
    for y, mo, d in candidates:
        try:
            _dt.date(y, mo, d)
        except ValueError:
            continue
        return True
    return False


def dob(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    if not _date_ok(text[s:e]):
        return None
    if e < len(text):
        ch = text[e]
        if ch == "T" and e + 1 < len(text) and text[e + 1].isdigit():
            return ("DOB", s, e)                       # 1990-01-31T00:00:00Z: the date part
        if ch.isascii() and (ch.isalnum() or ch == "_"):
            return None
        if ch in "-/." and e + 1 < len(text) and text[e + 1].isdigit():
            return None
    return ("DOB", s, e)


# --------------------------------------------------------------------------- PASSPORT

PASSPORT_PATTERN = (LEFT + _KEY_PREFIX + r"(?i:passport)(?:[ _.-]?(?i:number|num|no\.?|nr\.?|id)|[ ]?#)?"
                    + _CONNECT + r"(?P<v>[A-Za-z0-9]{6,9})")


def passport(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    value = text[s:e]
    if sum(c.isdigit() for c in value) < 4:
        return None
    if e < len(text):
        ch = text[e]
        if (ch.isascii() and (ch.isalnum() or ch == "_")) or (
                ch in "-/." and e + 1 < len(text) and text[e + 1].isalnum()):
            return None
    return ("PASSPORT", s, e)


# --------------------------------------------------------------------------- IBAN (labelled)

# An IBAN is found by its shape (upper case, mod-97) in pii_patterns. Typed by a person it is often
# lower or mixed case ("my iban is de89 3704 ..."); after the label ``IBAN`` any case counts. The
# mod-97 check is pii_patterns' (the validator is attached there, which imports this module).
IBAN_LABELLED_PATTERN = (LEFT + _KEY_PREFIX + r"(?i:iban)(?:[ _.-]?(?i:number|num|no\.?|nr\.?)|[ ]?#)?"
                         + _CONNECT
                         + r"(?P<v>[A-Za-z]{2}[0-9]{2}(?:[ ]?[A-Za-z0-9]{4}){2,7}(?:[ ]?[A-Za-z0-9]{1,3})?)")


# --------------------------------------------------------------------------- SSN

# The dashed form (123-45-6789) is an SSN by its shape alone (pii_patterns); nine digits, or
# 3-2-4 with spaces, only right after ``SSN`` / ``social security (number|no|#)``, also as keys.
# After that label the dashed form also counts with a 9xx area (an ITIN, or 987-65-4321 as in
# examples), which its shape alone does not: the text says what it is.
SSN_PATTERN = (LEFT + _KEY_PREFIX + r"(?i:ssn|social[ _.-]?security)(?:[ _.-]?(?i:number|num|no\.?|nr\.?)|[ ]?#)?"
               + _CONNECT + r"(?P<v>[0-9]{3}(?:[ ]?[0-9]{2}[ ]?|-[0-9]{2}-)[0-9]{4})")


def ssn_digits(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    digits = text[s:e].replace(" ", "").replace("-", "")
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area in ("000", "666") or group == "00" or serial == "0000":
        return None
    if e < len(text) and (text[e].isdigit() or (text[e] in "-." and text[e + 1:e + 2].isdigit())):
        return None
    return ("SSN", s, e)


# --------------------------------------------------------------------------- PHONE (plain digits)

# "4155550132" is an order number as much as a phone by its shape; after a phone keyword (or as the
# value of a phone key, a JSON number included) it is a phone. A lower-case head before the keyword
# only counts before a capital (customerPhone): "hotel 4155550132" is not a phone label.
# The number: 8 to 15 digits (counted by phone_digits: Poland's and Italy's 9, a local 8 in Australia
# and Sweden), single blanks, dots or dashes between, the area code maybe in brackets: "020 7946 0958",
# "507 680 318", "(0118) 4960139", "(08).2687.6822", "08-84 98 52".
# Asked to be called: "call me at", "reach us on", "text me at" say what the number is as a keyword does.
_CALL_ME = r"(?i:call|reach|text|ring|contact|whatsapp)[ ](?i:me|us)(?:[ ](?i:at|on))?"
PHONE_CONTEXT_PATTERN = (LEFT + r"(?:(?:[A-Za-z][A-Za-z0-9]*[_.-]){0,2}"
                         + r"(?:(?:[a-z][a-z0-9]*)?(?:Phone|Telephone|Tel|Mobile|Cell|Cellphone|Fax)"
                         + r"|(?i:phone|telephone|tel|mobile|cell|cellphone|fax))\.?"
                         + r"(?:[ _.-]?(?i:number|num|no\.?|nr\.?)|[ ]?#)?|" + _CALL_ME + ")"
                         + _CONNECT + r"(?P<v>\+?(?:\([0-9]{1,5}\)[ .-]?[0-9](?:[ .-]?[0-9]){2,14}"
                         + r"|[0-9](?:[ .-]?[0-9]){6,14}))")
# The keyword as a word of its own (or with number/no after it): not "tel" in tell, remotely, telemetry
# or otel.*, nor "cell" in cancellation. Every cell a trigger flags pays the exact Python pass.
PHONE_CONTEXT_TRIGGER = (r"(?:(?i:phone|mobile|fax|cell)|(?:^|[^Oo])(?i:tel))(?i:number|num|no|nr)?(?:[^0-9A-Za-z]|$)"
                         # "call me at 0...": the verb is read back by the exact pass (a run of letters before
                         # the trigger); left out here, it cost the automaton ~4% of the sanitizer's time
                         r"| (?:me|us|Me|Us|ME|US) (?:at |on |At |On |AT |ON )?[0-9(]")


_DATE_OR_TIME = re.compile(r"[0-9]{4}[-./][0-9]{1,2}[-./][0-9]{1,2}|[0-9]{1,2}([-./ ])[0-9]{1,2}\1[0-9]{4}(?![0-9])")


# An extension after a number is part of it: "(299)761-0003x679", "555-123-4567 ext. 12" (Faker's
# en_US numbers carry one one time in two). Glued to the number, it hid the whole number from the rules.
_PHONE_EXTENSION = re.compile(r"[ ]?(?:[xX]|[Ee]xt\.?|[Ee]xtension)[ ]?[0-9]{1,6}(?![0-9A-Za-z_])")


def phone_extension_end(text: str, e: int) -> int:
    """Where a phone number ending at ``e`` ends with its extension, if one follows."""
    ext = _PHONE_EXTENSION.match(text, e)
    return ext.end() if ext else e


def phone_digits(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    if not 8 <= sum(c.isdigit() for c in text[s:e]) <= 15:
        return None
    e = phone_extension_end(text, e)
    if e < len(text) and (text[e].isalnum() or text[e] == "_" or (text[e] in "-." and text[e + 1:e + 2].isdigit())):
        return None
    if e < len(text) and text[e] == ":" or _DATE_OR_TIME.match(text, s):   # "cell 2024-08-06 12:00"
        return None
    return ("PHONE", s, e)


# --------------------------------------------------------------------------- ADDRESS

_STRONG = ("Street", "St", "Avenue", "Ave", "Road", "Rd", "Boulevard", "Blvd", "Lane", "Ln", "Parkway", "Pkwy",
           "Terrace", "Highway", "Hwy", "Crescent")
_WEAK = ("Drive", "Dr", "Court", "Ct", "Way", "Place", "Pl", "Circle", "Cir", "Square", "Sq", "Close", "Plaza",
         "Trail", "Trl", "Alley", "Row", "Mews", "Gardens", "Grove", "Walk", "Ter")
_SUFFIX = "(?:" + "|".join(sorted(_STRONG + _WEAK, key=lambda w: (-len(w), w))) + ")"
_STREET_WORD = (rf"(?:[{_UP}][{_LO}]*(?:['’-][A-Za-z{_UP}{_LO}][{_LO}]*|[A-Z][{_LO}]+)?\.?"
                r"|[1-9][0-9]{0,2}(?:st|nd|rd|th))")
_CITY = rf"[{_UP}][{_LO}]+(?:[ -][{_UP}][{_LO}]+){{0,2}}"
_UKPC = r"[A-Z]{1,2}[0-9][A-Z0-9]?[ ]?[0-9][A-Z]{2}"
_ZIP = r"[0-9]{5}(?:-[0-9]{4})?"
_UNIT = (r"(?P<unit>,?[ ]+(?:(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|Fl|Room|Rm|Bldg)\.?[ ]*#?[ ]*"
         r"[A-Za-z0-9-]{1,6}|#[ ]?[A-Za-z0-9-]{1,6}))?")
_TAIL = (rf"(?P<tail>,[ ]*{_CITY},?[ ]+(?:{_UKPC}|[A-Z]{{2}}[ ]+{_ZIP}|[A-Z]{{2}}|{_ZIP})"
         rf"|,?[ ]+[A-Z]{{2}}[ ]+{_ZIP}|,[ ]*{_ZIP}(?:[ ]+{_CITY})?|,?[ ]+{_UKPC}|,?[ ]+{_ZIP})?")
_STREET = (rf"[1-9][0-9]{{0,5}}[A-Za-z]?(?:-[0-9]{{1,5}}[A-Za-z]?)?[ ]+{_STREET_WORD}(?:[ ]+{_STREET_WORD}){{0,3}}"
           rf"[ ]+(?P<suffix>{_SUFFIX})\.?(?:[ ]+(?:NE|NW|SE|SW|N|S|E|W)\.?DIR_END)?{_UNIT}{_TAIL}")
ADDRESS_PATTERN = LEFT_KEY + "(?P<v>" + _STREET.replace("(?P<unit>", "(?:").replace("(?P<tail>", "(?:").replace(
    "(?P<suffix>", "(?:").replace("DIR_END", "") + ")"
# The validator re-reads the address with a lookahead the shared RE2 syntax lacks: a direction
# letter is not the start of the next word ("Court Suite 200" is not "Court S").
_STREET_RE = re.compile(_STREET.replace("DIR_END", "(?![A-Za-z])"))
# deliberately loose (a number, a space, a capital): a longer trigger costs more RE2 states per batch
ADDRESS_TRIGGER = rf"[0-9][A-Za-z]? +(?:[{_UP}][{_LO}]|[NSEW]\.? |[0-9]+(?:st|nd|rd|th) )"

_ADDRESS_KEY = (r"(?i:(?:street|shipping|billing|home|mailing|postal|residential|delivery|customer|patient|contact"
                r"|physical|permanent|current|previous|primary|work|office|ship[_.-]?to|bill[_.-]?to)[_.-]?address"
                r"|street[_.-]?address|address|street)(?:[_.-]?(?i:line)?[_.-]?[1-3])?")
# The value's shape is in the pattern, not only in the validator: a match the validator refuses
# would hide what else the value holds (an IP with its port, an e-mail) from the other rules.
_ADDR_CH = r'''(?:[^"\\@:]|\\[^"\\])'''
ADDRESS_KEY_PATTERN = (LEFT_KEY + _ADDRESS_KEY + SEP + rf'''(?:\\*"(?P<v>{_ADDR_CH}*[ ]{_ADDR_CH}*)\\*"'''
                       + r"""|'(?P<v2>[^'"\\@:]*[ ][^'"\\@:]*)')""")

_NOT_BEFORE_NUMBER = frozenset(
    "chapter step page version v section part top episode season volume vol item figure fig table level phase "
    "stage round day days week weeks year years order ticket issue rule lesson no number id ref release build "
    "pages chapters steps sections items parts levels rounds versions episodes "
    "line lines row rows sprint grade class".split())
_ADDRESS_CUE = re.compile(
    r"(?i:address|\blive[sd]?\s+(?:at|on)|\bliving\s+at|\blocated\s+(?:at|on)|\breside[sd]?\s+at|\bship(?:ped|ping)?\s+to"
    r"|\bdeliver(?:ed|y)?\s+to|\bsend\s+(?:it\s+)?to|\bmail(?:ed)?\s+to|\bmoved\s+to|\bvisit\s+us\s+at|\boffice\s+at"
    r"|\bhome\s+at)[^.\n]{0,12}\Z")


_NEXT_WORD = re.compile(r"[ ]+([a-z]+)")
#: lowercase words that may follow an address in a sentence ("12 Oak Lane and ...", "... is my home")
_AFTER_ADDRESS = frozenset(
    "and or is was in on by for to with near from at but which where since until before after as apt suite unit "
    "floor flat room please then so if when".split())
_YEAR_NUMBER = re.compile(r"(?:19|20)[0-9]{2}[ ]")


def address(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    m = _STREET_RE.match(text, s)
    if m is None:
        return None
    e = m.end()
    evidence = bool(m.group("unit") or m.group("tail"))
    before = re.sub(r"\\[nrt]", "  ", text[max(0, s - 48):s])   # a JSON escape separates words too
    prev = re.search(r"([A-Za-z]+)[ ]*#?[ ]*\Z", before)
    if prev and prev.group(1).lower() in _NOT_BEFORE_NUMBER and not evidence:
        return None
    weak = m.group("suffix") in _WEAK or _YEAR_NUMBER.match(text, s)      # "In 2024 Wall Street rallied"
    if weak and not evidence and not _ADDRESS_CUE.search(before):
        return None
    if e < len(text) and text[e].isascii() and (text[e].isalnum() or text[e] == "_"):
        return None
    if text[e - 1] == "." and not evidence:
        e -= 1                                    # "... 7 Elm Court." ends a sentence
    if not evidence and re.match(rf"[ ]+[{_UP}][{_LO}]", text[e:e + 3]):
        return None                               # "3 Google Street View": part of a longer title
    nxt = _NEXT_WORD.match(text, e)
    if nxt and not evidence and nxt.group(1) not in _AFTER_ADDRESS and not _ADDRESS_CUE.search(before):
        return None                               # "2 Baker Street addresses": a count of things
    return ("ADDRESS", s, e)


# A word of the address: Latin, or any script's letters (Faker's hi_IN "28 राजीव पाटिल", zh_CN "...廖路v座 314397"),
# also as the \u escapes of JSON written ensure_ascii.
_ADDRESS_WORD = re.compile(r"[A-Za-z]{3}|[^\W\d_A-Za-z]{2}|(?:\\+u[0-9a-fA-F]{4}){2}")


def address_value(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    """The quoted value of an address key: a postal address has a digit and a word, no @ or URL."""
    value = text[s:e]
    if (not any(c.isdigit() for c in value) or not _ADDRESS_WORD.search(value) or " " not in value.strip()
            or "@" in value or "://" in value or value.lower().startswith("0x")):
        return None
    return ("ADDRESS", s, e)


# --------------------------------------------------------------------------- PERSON

# Name words take Latin Extended-A letters too (Polish, Czech, Turkish: "Błażej Neska", "Łukasz"), and a
# surname its particles ("Jort van der Velden", "Pierre du Briand", "Maria da Mota"): without them the
# name was not found, or found up to the particle with the surname after it kept.
_EXT_LATIN = "Ā-ſ"
_NAME_LOWER_RUN = rf"(?:[{_LO}{_EXT_LATIN}]|\\+u00[e-fE-F][0-9a-fA-F]|\\+u01[0-7][0-9a-fA-F])+"
_NAME_CAP = rf"(?:[{_UP}{_EXT_LATIN}]|\\+u00[cdCD][0-9a-fA-F]|\\+u01[0-7][0-9a-fA-F])"
_NAME_WORD = (rf"(?:{_NAME_CAP}{_NAME_LOWER_RUN}(?:['’-][{_UP}]?{_NAME_LOWER_RUN}|[A-Z]{_NAME_LOWER_RUN})?|[A-Z]\.)")
_PARTICLE = r"(?:van|von|der|den|de|du|da|das|dos|do|del|della|di|le|la|ten|ter|zu|bin)[ ]+"
_NAME = rf"(?P<v>{_NAME_WORD}(?:[ ]+(?:{_PARTICLE}){{0,2}}{_NAME_WORD}){{0,2}})"
_TITLE_WORD = r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Ing|Herr|Frau|Mme|Mlle|Sr|Sra|Srta|Sig|Sig\.ra|Dott|Dott\.ssa)"
_TITLE = rf"(?:{_TITLE_WORD}\.?[ ]+)?"
PERSON_INTRO_PATTERN = (LEFT + r"(?:(?:[Mm]y|MY)[ ](?:full[ ])?(?:name|NAME)(?:[ ]+(?:is|IS)|'s)[ ]+" + _TITLE
                        + r"|Dear[ ]+" + _TITLE
                        + r"|(?:[Ss]incerely|[Rr]egards|[Ss]igned)[,:](?:[ \t]|\r?\n|\\+[rnt]){0,6})"
                        + _NAME)
PERSON_INTRO_TRIGGER = r"[Mm]y (?:full )?name|MY NAME|Dear |[Ss]incerely[,:]|[Rr]egards[,:]|[Ss]igned[,:]"
# Weaker intros: "Hi, I'm Sarah Connor", "Customer: John Smith". "I'm Sorry" or "Customer: Premium" is no name,
# so these need two name words (person_pair), or a title before one.
PERSON_PAIR_PATTERN = (LEFT + r"(?:I(?:'|’|\\+u2019)m|I[ ]am|(?:Customer|Patient|Client|Cardholder|Passenger|Recipient)"
                       r"[ ]?:)[ ]+" + _TITLE + _NAME)
PERSON_PAIR_TRIGGER = r"I(?:'|’|\\+u2019)m |I am |(?:Customer|Patient|Client|Cardholder|Passenger|Recipient) ?: "
# A JSON key naming a person's role ("recipient": "Jane Doe", "author": "Jane Doe"), whose whole value is
# two to five capitalised name words (person_of_role): "Finance Team" or "system" is no one.
_ROLES = (r"(?i:recipient|sender|author|owner|assignee|reporter|cardholder|account_holder|beneficiary|payee"
          r"|attendee|requester|requestor|signatory)")
PERSON_ROLE_PATTERN = (LEFT_KEY + _ROLES + r'\\*"[ \t]*:[ \t]*\\*"(?P<v>' + _NAME_CAP
                       + r'(?:[^"\\]|\\+u[0-9a-fA-F]{4}){1,80}?)\\*"')
PERSON_ROLE_TRIGGER = _ROLES + rf'\\*"[ \t]*:[ \t]*\\*"[A-Z{_UP}{_EXT_LATIN}\\]'
# One rule for every "<key or label> name: value" form; the validator reads the key back.
# A quoted name value may hold Latin Extended-A letters too (Polish, Czech, Turkish: "Błażej Neska", "Bartoś").
_NAME_CH = rf"(?:[A-Za-z{_UP}{_LO}{_EXT_LATIN}'’. -]|\\+u[0-9a-fA-F]{{4}})"
_NAME_VALUE_FORMS = (rf'''(?:\\*"(?P<v>{_NAME_CAP}{_NAME_CH}*)\\*"|'(?P<v2>{_NAME_CAP}{_NAME_CH}*)'|'''
                     + _TITLE + _NAME.replace("(?P<v>", "(?P<v3>") + ")")
PERSON_NAMED_PATTERN = (LEFT_KEY + _KEY_PREFIX + r"(?i:name)(?:" + SEP + r"|[ \t]*-[ \t]*)" + _NAME_VALUE_FORMS)
PERSON_NAMED_TRIGGER = rf"""(?i:name)\\*["']?[ \t]*[:=-][ \t]*\\*["']?(?:[{_UP}{_EXT_LATIN}]|\\+u00[cdCD]|\\+u01[0-7])"""
#: the shared keyword trigger of DOB, PASSPORT and address keys: one literal set is cheapest for RE2
KEYWORD_TRIGGER = r"(?i:d\.?o\.?b|birth|born|passport|address|street|ssn|social.security|iban)"

#: capitalised words that start sentences or address groups, never a name
_NOT_NAMES = frozenset(
    "a an and the i i'm im we you it this that these those there here my our your his her their please thanks thank "
    "hello hi hey dear sir madam madame all team everyone customer customers client user users colleague colleagues "
    "friend friends valued member members support admin administrator manager hiring sales service services "
    "department office staff partner partners guest guests patient passenger owner reader readers applicant "
    "candidate sender recipient unknown none null n/a na anonymous redacted test default new order report status "
    "tool agent model system assistant error summary is was not no yes ok okay on in at to for of from with by "
    "sincerely regards best kind warm signed cheers ps p.s. mr mrs ms dr prof "
    # assistants introduce themselves too: "My name is Claude"
    "claude gpt chatgpt gemini llama mistral copilot siri alexa bot chatbot "
    # title-case words of tools, products and documents: "Name: Web Search", "OpenAI Research"
    "web search api app application product plan project file document page console research group company "
    "inc ltd llc corp gmbh openai anthropic google microsoft amazon meta data tools".split())


def person(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    """A run of capitalised name words: cut at the first word that is an ordinary one."""
    words = text[s:e].split()
    keep = []
    for w in words:
        if w.lower().rstrip(".") in _NOT_NAMES or w.lower() in _NOT_NAMES:
            break
        keep.append(w)
    if not keep or (len(keep) == 1 and len(keep[0]) <= 2):
        return None
    end = s + len(" ".join(keep)) if len(keep) < len(words) else e
    if end == e and e < len(text) and text[e].isascii() and (text[e].isalnum() or text[e] == "_"):
        if len(keep) < 2:
            return None
        keep.pop()                       # "Antje Börner B.Sc.": the degree's "B." is no name word
        end = s + len(" ".join(keep))
    return ("PERSON", s, end)


def person_pair(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    """:func:`person` after a weaker intro: two name words at least, or one after a title."""
    found = person(text, s, e, json_text)
    if found is None:
        return None
    titled = _TITLE_BEFORE.search(text, max(0, s - 12), s) is not None
    return found if titled or len(text[s:found[2]].split()) >= 2 else None


def person_of_role(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    """The value of a role key when it is 2-5 capitalised name words (a title before them allowed)."""
    if person_value(text, s, e, json_text) is None:
        return None
    value = _UNICODE_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text[s:e])  # \u0141ukasz is Łukasz
    words = [w for w in value.split() if w.lower().rstrip(".") not in _TITLE_WORDS]
    return ("PERSON", s, e) if 2 <= len(words) <= 5 and all(w[:1].isupper() for w in words) else None


_UNICODE_ESCAPE = re.compile(r"\\+u([0-9a-fA-F]{4})")


_NAME_VALUE = re.compile(rf"(?:[A-Za-z{_UP}{_LO}{_EXT_LATIN}'’.-]|\\+u[0-9a-fA-F]{{4}})+"
                         rf"(?:[ ]+(?:[A-Za-z{_UP}{_LO}{_EXT_LATIN}'’.-]|\\+u[0-9a-fA-F]{{4}})+){{0,4}}\Z")
#: titles and honorifics around a name (Faker writes "Dr Ann Green", "Mrs Kelly Anderson", "Prof. Eitel
#: Heuser", "Sig.ra Melissa Blasi", "pani Janina Fedorczyk"): not names, but no reason to refuse the value
_TITLE_WORDS = frozenset(
    "mr mrs ms miss mx dr prof sir dame herr frau mme mlle sig sig.ra sig.na dott dott.ssa sr sra srta dhr mevr "
    "pan pani ing dipl.-ing univ.prof jr sr. phd md dds dvm b.a b.sc b.eng m.a m.sc mba ii iii iv".split())


def person_value(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    """The whole value of a name key, when it reads like a name (letters, 1-5 words)."""
    value = text[s:e].strip()
    if not value or len(value) > 80 or not _NAME_VALUE.match(value):
        return None
    words = [w for w in value.split() if w.lower().rstrip(".") not in _TITLE_WORDS and w.lower() not in _TITLE_WORDS]
    if not words or any(w.lower().rstrip(".") in _NOT_NAMES for w in words):
        return None
    if not any(c.isalpha() for c in value):
        return None
    return ("PERSON", s, e)


_PERSON_SIBLING = re.compile(
    r'''\\*"(?i:first[_-]?name|last[_-]?name|surname|given[_-]?name|family[_-]?name|middle[_-]?name|e-?mail'''
    r'''|email[_-]?address|phone|phone[_-]?number|mobile|telephone|dob|date[_-]?of[_-]?birth|birth[_-]?date'''
    r'''|birthdate|birthday|gender|ssn|passport|passport[_-]?number|address|home[_-]?address|street)\\*"[ \t]*:''')
_PERSON_PARENT = re.compile(
    r'''\\*"(?i:customers?|patients?|contacts?|persons?|people|employees?|passengers?|guests?|recipients?'''
    r'''|senders?|clients?|applicants?|cardholders?|travell?ers?|beneficiar(?:y|ies)|members?|authors?'''
    r'''|users?|account[_-]?holders?|individuals?|students?|tenants?|residents?)\\*"[ \t]*:[ \t]*\Z''')
_SCAN = 800                                        # a person object is small; look no further
_BRACKETS = re.compile(r"[{}\[\]]")


def _container_start(text: str, pos: int) -> int:
    """Index of the unmatched ``{``/``[`` before ``pos`` (-1 when none within the scan window)."""
    depth = 0
    lo = max(0, pos - _SCAN)
    for m in reversed(list(_BRACKETS.finditer(text, lo, pos))):
        if m.group() in "}]":
            depth += 1
        elif depth == 0:
            return m.start()
        else:
            depth -= 1
    return -1


def _container_end(text: str, pos: int) -> int:
    depth = 0
    for m in _BRACKETS.finditer(text, pos, min(len(text), pos + _SCAN)):
        if m.group() in "{[":
            depth += 1
        elif depth == 0:
            return m.start()
        else:
            depth -= 1
    return min(len(text), pos + _SCAN)


def _key_before(text: str, pos: int) -> bool:
    """Whether the container opening at ``pos`` is the value of a person-like key."""
    return bool(_PERSON_PARENT.search(text, max(0, pos - 64), pos))


def person_in_object(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    """``"name": "..."`` counts only inside an object that describes a person."""
    if person_value(text, s, e, json_text) is None:
        return None
    start = _container_start(text, s)
    if start < 0 or text[start] != "{":
        return None
    end = _container_end(text, e)
    if _PERSON_SIBLING.search(text, start, end):
        return ("PERSON", s, e)
    if _key_before(text, start):
        return ("PERSON", s, e)
    outer = _container_start(text, start)              # an element of "customers": [{...}, {...}]
    if outer >= 0 and text[outer] == "[" and _key_before(text, outer):
        return ("PERSON", s, e)
    return None


_QUALIFIERS = ("first", "last", "full", "given", "family", "middle", "customer", "contact", "patient", "client",
               "legal", "passenger", "guest", "cardholder", "employee", "sur", "maiden", "owner", "recipient",
               "sender", "holder", "beneficiary", "payee", "applicant", "member", "student")
_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def _key_before_value(text: str, s: int) -> tuple[str, int, bool] | None:
    """Read ``<prefix>name<quote?> : <quote?>`` backwards from the value start ``s``:
    (prefix, index of "name", whether the key was quoted), or None."""
    i = s
    while i > 0 and text[i - 1] in "\"'\\":
        i -= 1
    while i > 0 and text[i - 1] in " \t":
        i -= 1
    if i == 0 or text[i - 1] not in ":=-":
        return None
    i -= 1
    while i > 0 and text[i - 1] in " \t":
        i -= 1
    j = i
    while i > 0 and text[i - 1] in "\"'\\":
        i -= 1
    quoted = i < j
    if i < 4 or text[i - 4:i].lower() != "name":
        return None
    k = i - 4
    p = k
    while p > 0 and text[p - 1] in _KEY_CHARS and k - p < 64:
        p -= 1
    if 0 < p < k and text[p - 1] == "\\" and text[p] in "nrt":
        p += 1                                        # the key starts after a JSON escape (\npatient_name)
    return text[p:k], k, quoted
_TITLE_BEFORE = re.compile(rf"(?<![A-Za-z]){_TITLE_WORD}\.?[ ]+\Z")
_QUALIFIED_KEY = re.compile(r"(?:^|[_.-])(?i:" + "|".join(_QUALIFIERS) + r")\Z|[a-z0-9](?:"
                            + "|".join(q.capitalize() for q in _QUALIFIERS) + r")\Z")
_LABEL_START = re.compile(r"""(?:^|[\n"'(\[{]|\\n|[:;,][ ]*)[ \t]*\Z""")
_QUALIFIER_WORD = re.compile(r"(?i:" + "|".join(_QUALIFIERS) + r")[ ]\Z")


def person_named(text: str, s: int, e: int, json_text: bool) -> tuple[str, int, int] | None:
    """The value after a ``...name`` key or label, by what the key says:

    a qualified key or label (``first_name``, ``customerName``, ``Full name:``) -> the value;
    a bare ``Name:`` label at the start of a line or string -> the value;
    the JSON key ``"name"`` -> only inside an object that looks like a person; anything else
    (``tool_name``, ``model.name``, ``file name:``) -> nothing.
    """
    title = _TITLE_BEFORE.search(text, max(0, s - 8), s)   # "Name: Dr Ann Green": the key is before the title
    key = _key_before_value(text, title.start() if title else s)
    if key is None:
        return None
    prefix, k, key_quoted = key
    prefix = prefix.rstrip("_.-")
    quoted = s > 0 and text[s - 1] in "\"'"
    check = person_value if quoted else person
    if prefix:
        return check(text, s, e, json_text) if _QUALIFIED_KEY.search(prefix) else None
    if key_quoted:                                    # "name": a JSON key
        return person_in_object(text, s, e, json_text) if quoted else None
    if _QUALIFIER_WORD.search(text, max(0, k - 16), k):
        return check(text, s, e, json_text)
    if text[k] == "N" and _LABEL_START.search(text, max(0, k - 4), k):
        return check(text, s, e, json_text)           # a "Name:" label opening a line, clause or bracket
    return None
