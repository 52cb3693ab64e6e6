"""Generate tests/testdata/pii_corpus.json: labelled PII values in realistic agent payloads, and lookalikes.

    /tmp/venv/bin/python tests/testdata/make_pii_corpus.py      # rewrites pii_corpus.json (seeded, deterministic)

Each positive is {"type", "needles", "text", "json_text", "carrier"}: ``text`` embeds one value of
``type`` in a carrier (chat message JSON, tool-call arguments as JSON-in-JSON, a retrieved document,
an exception message, a URL, an HTTP header dump, plain prose); ``needles`` are the substrings that
must be gone after redaction (the value itself; for private keys, their base64 lines).
Each lookalike is {"kind", "value", "text", "json_text", "carrier"} and must come out unchanged.
"""

from __future__ import annotations

import base64
import json
import random
import string
from pathlib import Path

OUT = Path(__file__).with_name("pii_corpus.json")
rng = random.Random(20261121)

FIRST = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "niaj",
         "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "zoë"]
LAST = ["smith", "jones", "garcia", "müller", "nguyen", "kowalski", "o.brien", "tanaka", "silva", "dubois"]
DOMAINS = ["example.com", "mail.example.org", "corp.acme.io", "gmail.com", "uni-heidelberg.de", "example.co.uk"]
B64 = string.ascii_letters + string.digits + "+/"
ALNUM = string.ascii_letters + string.digits


def rand(chars: str, n: int) -> str:
    return "".join(rng.choice(chars) for _ in range(n))


def luhn_complete(prefix: str, length: int) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for d in string.digits:
        cand = body + d
        total = 0
        for i, ch in enumerate(reversed(cand)):
            v = int(ch)
            if i % 2:
                v = v * 2 - 9 if v > 4 else v * 2
            total += v
        if total % 10 == 0:
            return cand
    raise AssertionError


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        v = int(ch)
        if i % 2:
            v = v * 2 - 9 if v > 4 else v * 2
        total += v
    return total % 10 == 0


def iban(country: str, bban_len: int) -> str:
    bban = "".join(rng.choice(string.digits + ("" if rng.random() < 0.6 else "ABCDEFGHIJ")) for _ in range(bban_len))
    moved = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    return f"{country}{check:02d}{bban}"


# --------------------------------------------------------------------------- values per type

def email() -> str:
    f, last = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice([f"{f}.{last}", f"{f}{rng.randint(1, 99)}", f"{f[0]}{last}", f"{f}+agent", f"{f}_{last}"])
    local = local.replace("ü", "u").replace("ë", "e")
    return f"{local}@{rng.choice(DOMAINS)}"


def phone() -> str:
    a, b, c = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
    return rng.choice([
        f"({a}) {b}-{c:04d}", f"{a}-{b}-{c:04d}", f"{a}.{b}.{c:04d}", f"+1 {a} {b} {c:04d}", f"+1-{a}-{b}-{c:04d}",
        f"+44 20 {rng.randint(7000, 7999)} {rng.randint(0, 9999):04d}", f"+4915{rng.randint(100000000, 999999999)}",
        f"+33 6 {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}",
        f"+81 3-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}", f"+61 4{rng.randint(10, 99)} {rng.randint(100, 999)} {rng.randint(100, 999)}",
    ])


def card() -> str:
    kind = rng.choice(["visa", "mc", "amex", "disc", "mc2"])
    if kind == "visa":
        d = luhn_complete("4", 16)
    elif kind == "mc":
        d = luhn_complete(str(rng.randint(51, 55)), 16)
    elif kind == "mc2":
        d = luhn_complete(str(rng.randint(2221, 2720)), 16)
    elif kind == "amex":
        d = luhn_complete(rng.choice(["34", "37"]), 15)
        return rng.choice([d, f"{d[:4]} {d[4:10]} {d[10:]}", f"{d[:4]}-{d[4:10]}-{d[10:]}"])
    else:
        d = luhn_complete("6011", 16)
    return rng.choice([d, " ".join(d[i:i + 4] for i in range(0, 16, 4)), "-".join(d[i:i + 4] for i in range(0, 16, 4))])


def ssn() -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def iban_value() -> str:
    country, n = rng.choice([("DE", 18), ("GB", 18), ("FR", 23), ("NL", 14), ("ES", 20), ("IT", 23), ("CH", 17)])
    if country in ("GB", "NL"):
        bank = rand(string.ascii_uppercase, 4)
        v = iban(country, n - 4)
        v = v[:4] + bank + v[4:]
        # recompute the check digits with the bank code in place
        moved = v[4:] + country + "00"
        v = f"{country}{98 - int(''.join(str(int(c, 36)) for c in moved)) % 97:02d}{v[4:]}"
    else:
        v = iban(country, n)
    return v if rng.random() < 0.5 else " ".join(v[i:i + 4] for i in range(0, len(v), 4))


def ip() -> str:
    if rng.random() < 0.55:
        return ".".join(str(rng.randint(1, 254)) for _ in range(4))
    groups = [f"{rng.randint(0, 0xffff):x}" for _ in range(8)]
    return rng.choice([
        ":".join(groups), f"2001:db8::{groups[0]}:{groups[1]}", f"fe80::{groups[2]}:{groups[3]}:{groups[4]}",
        f"2001:0db8:85a3:0000:0000:8a2e:0370:{rng.randint(0x1000, 0xffff):04x}", f"::ffff:10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.7",
    ])


def mac() -> str:
    parts = [f"{rng.randint(0, 255):02x}" for _ in range(6)]
    if rng.random() < 0.5:
        parts = [p.upper() for p in parts]
    return rng.choice([":", "-"]).join(parts)


def url_credentials() -> tuple[str, str]:
    user = rng.choice(["admin", "svc_agent", "postgres", "deploy", FIRST[rng.randrange(10)]])
    pw = rand(ALNUM, rng.randint(8, 16)) + rng.choice(["", "!", "%21x", "_9"])
    scheme = rng.choice(["postgres", "postgresql", "mysql", "redis", "https", "amqp", "mongodb+srv", "ftp"])
    host = rng.choice(["db.internal", "10.0.3.4", "cache.prod.svc", "broker.example.net"])
    return f"{user}:{pw}", f"{scheme}://{user}:{pw}@{host}/app"


def jwt() -> str:
    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    head = b64({"alg": rng.choice(["HS256", "RS256"]), "typ": "JWT"})
    body = b64({"sub": str(rng.randint(1, 10**9)), "name": rng.choice(FIRST), "iat": rng.randint(1.6e9, 1.8e9)})
    return f"{head}.{body}.{rand(ALNUM + '-_', 43)}"


def bearer() -> tuple[str, str]:
    tok = rng.choice([rand(ALNUM + "-._", rng.randint(24, 60)) + str(rng.randint(0, 9)), jwt(),
                      base64.b64encode(f"{rng.choice(FIRST)}:{rand(ALNUM, 10)}".encode()).decode()])
    form = rng.choice(["Authorization: Bearer {t}", "authorization: bearer {t}", "Authorization: Basic {t}",
                       '"Authorization": "Bearer {t}"', "Bearer {t}", "-H 'Authorization: Bearer {t}'"])
    if "Basic" in form:
        tok = base64.b64encode(f"{rng.choice(FIRST)}:{rand(ALNUM, 10)}".encode()).decode()
    return tok, form.format(t=tok)


def private_key() -> tuple[list[str], str]:
    kind = rng.choice(["RSA ", "EC ", "OPENSSH ", ""])
    lines = [rand(B64, 64) for _ in range(rng.randint(3, 6))] + [rand(B64, rng.randint(10, 40)) + "=="]
    pem = f"-----BEGIN {kind}PRIVATE KEY-----\n" + "\n".join(lines) + f"\n-----END {kind}PRIVATE KEY-----"
    return [ln for ln in lines if len(ln) >= 20], pem


def api_key() -> tuple[str, str]:
    k = rng.choice([
        "sk-" + rand(ALNUM, 48), "sk-proj-" + rand(ALNUM + "-_", 64), "sk-ant-api03-" + rand(ALNUM + "-_", 80),
        "AKIA" + rand(string.ascii_uppercase + string.digits, 16), "ASIA" + rand(string.ascii_uppercase + string.digits, 16),
        "ghp_" + rand(ALNUM, 36), "gho_" + rand(ALNUM, 36), "github_pat_" + rand(ALNUM + "_", 82),
        "xoxb-" + f"{rng.randint(10**10, 10**11)}-{rng.randint(10**10, 10**11)}-" + rand(ALNUM, 24),
        "xoxp-" + f"{rng.randint(10**10, 10**11)}-" + rand(ALNUM, 32),
        "sk_live_" + rand(ALNUM, 24), "rk_live_" + rand(ALNUM, 24), "sk_test_" + rand(ALNUM, 24),
        "AIza" + rand(ALNUM + "-_", 35), "AWS_SECRET",
    ])
    if k == "AWS_SECRET":
        k = rand(ALNUM + "/+", 40)
        name = rng.choice(["aws_secret_access_key", "AWS_SECRET_ACCESS_KEY", "SecretAccessKey", "aws-secret-access-key"])
        frag = rng.choice([f"{name}={k}", f"{name}: {k}", f'"{name}": "{k}"', f"export {name}='{k}'"])
        return k, frag
    frag = rng.choice(["{k}", "OPENAI_API_KEY={k}", "use the key {k} for this", "key: {k}", "`{k}`", "({k})"])
    return k, frag.format(k=k)


def secret() -> tuple[str, str]:
    v = rng.choice([rand(ALNUM, rng.randint(8, 20)), "hunter2", "Tr0ub4dor&3", "correct-horse-battery",
                    rand(ALNUM, 6) + "!" + rand(ALNUM, 6), "P@ssw0rd_" + str(rng.randint(100, 999))])
    key = rng.choice(["password", "passwd", "db_password", "api_key", "secret", "client_secret", "token",
                      "auth_token", "DB_PASSWORD", "smtp.password", "apiKey", "refresh_token", "pwd"])
    if "&" in v or " " in v:
        form = rng.choice(['"{k}": "{v}"', "{k}='{v}'"])
    else:
        form = rng.choice(["{k}={v}", "{k}: {v}", '"{k}": "{v}"', "{k}='{v}'", '{k}="{v}"', "--{k} {v}" if False else "{k} = {v}"])
    return v, form.format(k=key, v=v)


# --------------------------------------------------------------------------- carriers

def c_chat(frag: str) -> tuple[str, bool]:
    msg = rng.choice(["Hi, {f} — can you check my order?", "Please update my profile with {f}.",
                      "My details:\n{f}\nThanks!", "I tried again with {f} and it failed.", "{f}"]).format(f=frag)
    doc = {"llm": {"model_name": "gpt-4o-2024-08-06", "input_messages": [
        {"message": {"role": "system", "content": "You are a support agent. Today is 2024-08-06."}},
        {"message": {"role": "user", "content": msg}}],
        "token_count": {"prompt": rng.randint(50, 4000), "completion": rng.randint(5, 900)}},
        "session": {"id": "9f1c2b7e-5d4a-4c3b-8e2f-1a0b9c8d7e6f"}}
    return json.dumps(doc, ensure_ascii=False), True


def c_tool_args(frag: str) -> tuple[str, bool]:
    args = {"customer_note": f"note: {frag}", "order_id": f"ORD-2024-{rng.randint(100000, 999999)}", "notify": True}
    doc = {"tool": {"name": "update_ticket", "parameters": json.dumps(args, ensure_ascii=False)},
           "input": {"value": json.dumps({"arguments": args}, ensure_ascii=False)}}
    return json.dumps(doc, ensure_ascii=False), True


def c_retrieved(frag: str) -> tuple[str, bool]:
    docs = [{"document": {"id": f"kb-{rng.randint(100, 999)}", "score": round(rng.random(), 3),
                          "content": "Refund policy v2.0.1: items can be returned within 30 days."}},
            {"document": {"id": f"crm-{rng.randint(100, 999)}", "score": round(rng.random(), 3),
                          "content": f"Customer record\n\tcontact: {frag}\n\tsince: 2019-03-14"}}]
    return json.dumps({"retrieval": {"documents": docs}}, ensure_ascii=False), True


def c_exception(frag: str) -> tuple[str, bool]:
    ev = [{"name": "exception", "time": "2024-08-06T12:30:45.123456Z", "attributes": {"exception": {
        "type": "ValueError", "message": f"could not process record ({frag})",
        "stacktrace": f"Traceback (most recent call last):\n  File \"/app/agent/tools.py\", line 88, in run\n"
                      f"    raise ValueError(f\"could not process record ({frag})\")\nValueError"}}}]
    return json.dumps(ev, ensure_ascii=False), True


def c_plain(frag: str) -> tuple[str, bool]:
    return rng.choice([
        "Sure! I've noted {f} on the ticket INV-000123.",
        "Error: upstream rejected request for {f} (status 422)",
        "GET https://api.example.com/v1/lookup?q={f}&page=2 -> 404",
        "{f}",
        "User said: \"{f}\" at 12:30:45",
    ]).format(f=frag), False


def c_http(frag: str) -> tuple[str, bool]:
    return f"POST /v1/chat HTTP/1.1\nHost: api.example.com\nContent-Type: application/json\n{frag}\nUser-Agent: agent/1.2.3", False


CARRIERS = [c_chat, c_tool_args, c_retrieved, c_exception, c_plain]


def positives() -> list[dict]:
    out = []

    def add(type_: str, needles: list[str], frag: str, carriers=CARRIERS) -> None:
        carrier = rng.choice(carriers)
        text, js = carrier(frag)
        out.append({"type": type_, "needles": needles, "text": text, "json_text": js, "carrier": carrier.__name__})

    for _ in range(60):
        v = email(); add("EMAIL", [v], v)
        v = phone(); add("PHONE", [v], rng.choice(["{v}", "call me at {v}", "phone: {v}", "tel {v}"]).format(v=v))
        v = card(); add("CARD", [v], rng.choice(["{v}", "card {v} exp 09/27", "my card is {v}, cvv is on the back"]).format(v=v))
        v = ssn(); add("SSN", [v], rng.choice(["SSN {v}", "ssn: {v}", "social security number {v}"]).format(v=v))
        v = iban_value(); add("IBAN", [v], rng.choice(["IBAN {v}", "wire to {v}", "{v}"]).format(v=v))
        v = ip(); add("IP", [v], rng.choice(["client {v}", "from {v}:8443", "ip={v}", "[{v}]"]).format(v=v))
        v = mac(); add("MAC", [v], rng.choice(["device {v}", "mac={v}", "{v}"]).format(v=v))
        v, frag = url_credentials(); add("URL_CREDENTIALS", [v], frag)
        v = jwt(); add("JWT", [v], rng.choice(["token {v}", "id_token was {v}", "{v}"]).format(v=v) if False else
                       rng.choice(["jwt {v}", "session cookie {v}", "{v}"]).format(v=v))
        v, frag = bearer(); add("BEARER_TOKEN", [v], frag, CARRIERS + [c_http, c_http])
        needles, frag = private_key(); add("PRIVATE_KEY", needles, frag, [c_chat, c_retrieved, c_exception, c_plain])
        v, frag = api_key(); add("API_KEY", [v], frag)
        v, frag = secret(); add("SECRET", [v], frag)
    # the JSON form of a secret: a config object serialised into an attribute
    for _ in range(40):
        v, _frag = secret()
        key = rng.choice(["password", "db_password", "client_secret", "api_key", "secret"])
        cfg = {"db": {"host": "db.internal", "port": 5432, "user": "app", key: v}, "pool": {"size": 10}}
        inner = rng.random() < 0.5
        doc = {"tool": {"name": "connect_db", "parameters": json.dumps(cfg)}} if inner else cfg
        out.append({"type": "SECRET", "needles": [v], "text": json.dumps(doc, ensure_ascii=False), "json_text": True,
                    "carrier": "config_json_in_json" if inner else "config_json"})
    return out


# --------------------------------------------------------------------------- lookalikes

def lookalikes() -> list[dict]:
    out = []

    def add(kind: str, v: str) -> None:
        carrier = rng.choice(CARRIERS)
        text, js = carrier(rng.choice(["{v}", "ref {v}", "value={v}", "({v})"]).format(v=v))
        out.append({"kind": kind, "value": v, "text": text, "json_text": js, "carrier": carrier.__name__})

    for _ in range(30):
        add("trace_id", f"{rng.getrandbits(128):032x}")
        add("span_id", f"{rng.getrandbits(64):016x}")
        add("uuid", "-".join(f"{rng.getrandbits(b * 4):0{b}x}" for b in (8, 4, 4, 4, 12)))
        add("sha1", f"{rng.getrandbits(160):040x}")
        add("sha256", f"{rng.getrandbits(256):064x}")
        add("iso_timestamp", f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"
                             f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.{rng.randint(0, 999999):06d}Z")
        add("version", rng.choice(["1.2.3", "v2.0.1", "3.11.7", "0.1.57", "v10.4.22-rc1", "1.0.0-beta.2"]))
        add("model", rng.choice(["gpt-4o-2024-08-06", "claude-3-5-sonnet-20241022", "gpt-4-0613", "gemini-1.5-pro-002",
                                 "claude-3-haiku-20240307", "llama-3.1-70b-instruct", "text-embedding-3-small"]))
        add("order", rng.choice([f"ORD-2024-{rng.randint(100000, 999999)}", f"INV-{rng.randint(0, 999999):06d}",
                                 f"PO-{rng.randint(10**7, 10**8)}", f"TKT-{rng.randint(1000, 99999)}"]))
        add("price", rng.choice([f"${rng.randint(1, 9)},{rng.randint(100, 999)}.{rng.randint(0, 99):02d}",
                                 f"€{rng.randint(1, 999)}.{rng.randint(0, 99):02d}", f"USD {rng.randint(1000, 99999)}.00"]))
        add("token_count", str(rng.choice([rng.randint(1, 999), rng.randint(1000, 128000)])))
        n = rng.choice(["4", "5", "6", "3"]) + "".join(rng.choice(string.digits) for _ in range(15))
        while luhn_ok(n):
            n = n[:-1] + str((int(n[-1]) + 1) % 10)
        add("non_luhn_16", n)
        add("date", rng.choice([f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}", f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/2024",
                                f"2024{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"]))
        add("duration", rng.choice([f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
                                    f"{rng.randint(100, 999)}.{rng.randint(100, 999)} ms", f"{rng.randint(1, 9)}h {rng.randint(1, 59)}m",
                                    f"took {rng.randint(100, 999)}-{rng.randint(1000, 9999)} ms"]))
        add("path", rng.choice(["/var/log/agent/2024-08-06.log", "C:\\Users\\agent\\app.py", "./data/v1.2.3/index.json",
                                "/home/app/.cache/huggingface/hub", "src/components/icon@2x.png", "s3://bucket/key/2024/08/06/part-0001.parquet"]))
        add("unix_ms", str(rng.randint(1_600_000_000_000, 1_800_000_000_000)))
        add("unix_ns", str(rng.randint(1_600_000_000_000_000_000, 1_800_000_000_000_000_000)))
        add("prose", rng.choice(["the basic plan costs less", "bearer of bad news", "the token budget is 4096",
                                 "password reset link sent", "use the secret menu", "my key takeaway", "api key rotation is monthly"]))
    return out


# --------------------------------------------------------------------------- context types (PERSON, ADDRESS, DOB, PASSPORT)
# These are PII only by their context, so every positive carries one: a keyword, a key, a street suffix.

NAMES_FIRST = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Zoë", "José",
               "Priya", "Mallory", "Olivia", "Rupert"]
NAMES_LAST = ["Smith", "Jones", "Garcia", "Müller", "Nguyen", "Kowalski", "O'Brien", "Tanaka", "Silva", "Dubois",
              "McDonald", "Haddad", "Van Dyke"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
STREETS = ["Baker", "Main", "Oak", "Maple", "Elm", "Pennsylvania", "Evergreen", "Sunset", "Lincoln", "Cedar Hill",
           "Old Mill", "Rue Saint", "Kingsley", "Jefferson"]
STRONG = ["Street", "St", "Avenue", "Ave", "Road", "Rd", "Boulevard", "Blvd", "Lane", "Ln", "Terrace", "Parkway"]
WEAK = ["Drive", "Dr", "Court", "Ct", "Way", "Place", "Pl", "Circle", "Square"]


def person_name() -> str:
    return rng.choice([f"{rng.choice(NAMES_FIRST)} {rng.choice(NAMES_LAST)}", rng.choice(NAMES_FIRST),
                       f"{rng.choice(NAMES_FIRST)} {rng.choice(NAMES_FIRST)} {rng.choice(NAMES_LAST)}"])


def person_prose() -> tuple[list[str], str]:
    n = f"{rng.choice(NAMES_FIRST)} {rng.choice(NAMES_LAST)}"
    form = rng.choice(["my name is {n}", "My name is {n}", "Hi, my full name is {n}", "Dear {n},", "Dear Ms. {n},",
                       "Kind regards,\n{n}", "Sincerely, {n}", "Best regards,\n\n{n}", "Name: {n}", "Full name: {n}",
                       "customer name: {n}", "Signed, {n}", "patient_name={n}", "Name - {n}"])
    return [n], form.format(n=n)


def person_json() -> tuple[list[str], str, str]:
    f, last = rng.choice(NAMES_FIRST), rng.choice(NAMES_LAST)
    n = f"{f} {last}"
    kind = rng.choice(["first_last", "customer", "passengers", "contact", "full_name", "camel", "patient"])
    if kind == "first_last":
        doc, needles = {"first_name": f, "last_name": last, "tier": "gold"}, [f, last]
    elif kind == "customer":
        doc, needles = {"customer": {"name": n, "tier": rng.choice(["gold", "silver"]), "since": 2019}}, [n]
    elif kind == "passengers":
        doc, needles = {"booking": "BK-7731", "passengers": [{"name": n, "seat": "3A"}, {"name": "Bo Chen", "seat": "3B"}]}, [n, "Bo Chen"]
    elif kind == "contact":
        doc, needles = {"ticket": 1182, "requester": {"name": n, "phone": "555-201-7781"}}, [n]
    elif kind == "full_name":
        doc, needles = {"full_name": n, "plan": "basic"}, [n]
    elif kind == "camel":
        doc, needles = {"customerName": n, "orderId": "ORD-2024-118834"}, [n]
    else:
        doc, needles = {"patient": {"name": n, "ward": "B2"}}, [n]
    return needles, kind, json.dumps(doc, ensure_ascii=False)


def dob_value() -> str:
    y, m, d = rng.randint(1940, 2005), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice([f"{y}-{m:02d}-{d:02d}", f"{d:02d}/{m:02d}/{y}", f"{m:02d}/{d:02d}/{y}", f"{d:02d}.{m:02d}.{y}",
                       f"{MONTHS[m - 1]} {d}, {y}", f"{d} {MONTHS[m - 1][:3]} {y}", f"{d} {MONTHS[m - 1]} {y}",
                       f"{y}/{m:02d}/{d:02d}", f"{MONTHS[m - 1][:3]}. {d}, {y}"])


def dob_frag(v: str) -> str:
    return rng.choice(["DOB: {v}", "D.O.B. {v}", "date of birth: {v}", "Date of birth is {v}", "birth date {v}",
                       "birthdate={v}", "born on {v}", "born {v}", "my date of birth is {v}", "dob={v}",
                       "DOB {v}", "Birthday: {v}"]).format(v=v)


def passport_value() -> str:
    return rng.choice([
        rng.choice(string.ascii_uppercase) + "".join(rng.choice(string.digits) for _ in range(7)),
        "".join(rng.choice(string.digits) for _ in range(9)),
        rand(string.ascii_uppercase, 2) + "".join(rng.choice(string.digits) for _ in range(7)),
        "C" + "".join(rng.choice("0123456789CFGHJKLMNPRTVWXYZ") for _ in range(4)) + "".join(rng.choice(string.digits) for _ in range(4)),
        f"{rng.randint(10, 99)}{rand(string.ascii_uppercase, 2)}{rng.randint(10000, 99999)}",
    ])


def passport_frag(v: str) -> str:
    return rng.choice(["passport {v}", "passport no. {v}", "Passport Number: {v}", "passport #{v}",
                       "my passport number is {v}", "PASSPORT: {v}", "passport_number={v}", "Passport No {v}"]).format(v=v)


def street() -> tuple[str, bool]:
    suffix = rng.choice(STRONG + WEAK)
    num = rng.choice([str(rng.randint(1, 9999)), f"{rng.randint(1, 300)}{rng.choice('AB')}", str(rng.randint(10000, 99999))])
    words = rng.choice(STREETS) if rng.random() < 0.85 else f"{rng.randint(1, 99)}th"
    direction = rng.choice(["", "", "", " NW", " SE"])
    return f"{num} {words} {suffix}{direction}", suffix in WEAK


def address_frag() -> tuple[list[str], str]:
    st, weak = street()
    unit = rng.choice(["", "", ", Apt 4B", " Suite 200", " #12", ", Unit 7"])
    tail = rng.choice(["", "", ", Springfield, IL 62704", ", London NW1 6XE", ", Boston, MA 02118", " 90210",
                       ", Austin TX 78701", ", 10115 Berlin"])
    value = st + unit + tail
    needles = [st] + [z for z in ("62704", "NW1 6XE", "02118", "90210", "78701", "10115") if z in tail]
    if weak and not unit and not tail:
        return needles, rng.choice(["ship to {v}", "my address is {v}", "I live at {v}", "deliver to {v}",
                                    "mailing address: {v}"]).format(v=value)
    return needles, rng.choice(["{v}", "ship to {v}", "my address is {v}", "I live at {v}",
                                "please send it to {v}"]).format(v=value)


def address_json() -> tuple[list[str], str, str]:
    st, _weak = street()
    value = st + rng.choice([", Springfield, IL 62704", ", London NW1 6XE", "", ", Apt 4B"])
    key = rng.choice(["address", "shipping_address", "billing_address", "street_address", "home_address",
                      "address_line1", "street"])
    doc = rng.choice([{key: value, "country": "US"}, {"customer": {"id": 42, key: value}},
                      {"order": "ORD-2024-118834", "ship_to": {key: value}}])
    return [st], key, json.dumps(doc, ensure_ascii=False)


def context_positives() -> list[dict]:
    out = []

    def add(type_: str, needles: list[str], frag: str) -> None:
        carrier = rng.choice(CARRIERS)
        text, js = carrier(frag)
        out.append({"type": type_, "needles": needles, "text": text, "json_text": js, "carrier": carrier.__name__})

    def add_json(type_: str, needles: list[str], kind: str, doc: str) -> None:
        inner = rng.random() < 0.5          # as an attribute value, or as tool arguments (JSON inside JSON)
        text = json.dumps({"tool": {"name": "update_record", "parameters": doc}}, ensure_ascii=False) if inner else doc
        out.append({"type": type_, "needles": needles, "text": text, "json_text": True,
                    "carrier": f"{kind}_json_in_json" if inner else f"{kind}_json"})

    for _ in range(50):
        needles, frag = person_prose(); add("PERSON", needles, frag)
        v = dob_value(); add("DOB", [v], dob_frag(v))
        v = passport_value(); add("PASSPORT", [v], passport_frag(v))
        needles, frag = address_frag(); add("ADDRESS", needles, frag)
    for _ in range(25):
        add_json("PERSON", *person_json())
        needles, key, doc = address_json(); add_json("ADDRESS", needles, key, doc)
        v = dob_value()
        key = rng.choice(["dob", "date_of_birth", "birthDate", "patient_dob", "birthdate"])
        add_json("DOB", [v], key, json.dumps({"patient": {"id": "p-118", key: v}} if rng.random() < 0.5 else {key: v}))
        v = passport_value()
        key = rng.choice(["passport", "passport_number", "passportNo", "passport_no"])
        add_json("PASSPORT", [v], key, json.dumps({"traveler": {"nationality": "DE", key: v}}))
    return out


CONTEXT_LOOKALIKES = {
    "date_no_dob": ["delivered on 2024-01-31", "created 1990-01-31", "born-again shell 5.2", "born in Lisbon in 1990",
                    "the dob field is optional", "Adobe release 2024-05-01", "birthday party on 2024-06-01?"
                    " no, on Friday", "invoice date 31/01/1990"],
    "passport_no_number": ["bring your passport to the desk", "passport expired last year", "passport photo rules",
                           "passport office opens 9-17", "Passport renewal takes 6 weeks", "passport v2.0.1 SDK"],
    "street_no_number": ["near Main Street", "I live near 5th Avenue", "3 Way handshake", "version 2 Drive",
                         "Step 2 Click Place Order", "Upload 2 Google Drive files", "3 Google Street View images",
                         "Top 10 Main Street Restaurants", "order 1234 St. Louis shipment", "Chapter 3 Wall Street",
                         "4 Park Place cards", "Windows 11 Pro Drive", "50 EUR. Students are charged",
                         "In 2024 Wall Street rallied", "Returned 3 Main Street results",
                         "We shipped 12 Oak Lane chairs", "Pages 10 High Street"],
    "not_a_person": ['{"type": "function", "function": {"name": "lookup_order", "parameters": {}}}',
                     '{"name": "Quarterly Report", "pages": 3}', '{"model": {"name": "Claude Sonnet", "provider": "x"}}',
                     '{"warehouses": [{"name": "Lisbon", "on_hand": 3}]}', "Dear Customer,", "Dear Valued Customer,",
                     "Dear Team,", "tool name: Web Search", "Name: lookup_order", "Regards, The Support Team",
                     "Sincerely, Your Agent", '{"display_name": "Web Search"}', "file_name: Report Final",
                     "my name is not important", '{"model_name": "GPT 4o"}', "span name: ChatCompletion",
                     "Hello! My name is Claude, an AI assistant", "Dear Sir or Madam,", "Name: Web Search",
                     '{"author": {"name": "OpenAI Research"}}', '{"user": {"name": "Admin Console", "role": "admin"}}'],
    "address_key_not_postal": ['{"server": {"address": "api.internal:8080"}}', '{"address": "0x7ffd5e8c"}',
                               '{"email_address": "ops at example"}', "the IP address 2 Hosts"],
}


def context_lookalikes() -> list[dict]:
    out = []
    for kind, values in CONTEXT_LOOKALIKES.items():
        for v in values:
            for _ in range(2):
                carrier = rng.choice(CARRIERS)
                text, js = carrier(rng.choice(["{v}", "ref {v}", "({v})"]).format(v=v))
                out.append({"kind": kind, "value": v, "text": text, "json_text": js, "carrier": carrier.__name__})
    return out


def main() -> None:
    corpus = {"seed": 20261121, "positives": positives() + context_positives(),
              "lookalikes": lookalikes() + context_lookalikes()}
    OUT.write_text(json.dumps(corpus, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {len(corpus['positives'])} positives, "
          f"{len(corpus['lookalikes'])} lookalikes")


if __name__ == "__main__":
    main()
