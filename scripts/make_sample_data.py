"""Regenerate sample_data/people.csv: a few hundred realistic, made-up people (deterministic)."""

import csv
import random
import unicodedata
from pathlib import Path

FIRST = [
    "Ada",
    "Grace",
    "Alan",
    "Katherine",
    "Linus",
    "Margaret",
    "José",
    "Zoë",
    "Hiro",
    "Amara",
    "Søren",
    "Priya",
    "Chloé",
    "Mateo",
    "Aoife",
    "Björn",
    "Fatima",
    "Łukasz",
    "Nguyễn",
    "Olu",
    "Émile",
    "Sasha",
    "Ingrid",
    "Tomás",
]
LAST = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Johnson",
    "Torvalds",
    "Hamilton",
    "Muñoz",
    "Okafor",
    "Kierkegaard",
    "Iyer",
    "O'Brien",
    "Müller",
    "Dubois",
    "Kowalski",
    "Tanaka",
    "García",
    "Nakamura",
    "Smith-Jones",
    "Ødegaard",
    "Silva",
]
COMPANIES = [
    "acme.io",
    "globex.com",
    "initech.net",
    "umbrella-corp.com",
    "hooli.xyz",
    "stark.industries",
    "wayne-enterprises.com",
    "piedpiper.com",
    "soylent.co",
    "tyrell.ai",
    "cyberdyne.systems",
    "wonka.fr",
    "müller-bau.de",
    "nakatomi.jp",
]
COUNTRIES = ["US", "GB", "DE", "FR", "JP", "BR", "IN", "NG", "SE", "ES", ""]


def ascii_slug(text: str) -> str:
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in text.lower() if ch.isalnum() or ch in "-'")


def main() -> None:
    rng = random.Random(42)
    rows = []
    for i in range(1, 301):
        first, last, domain = rng.choice(FIRST), rng.choice(LAST), rng.choice(COMPANIES)
        local = f"{ascii_slug(first)}.{ascii_slug(last)}"
        if i % 23 == 0:
            local += "+crm"  # plus-addressing: a '+' that must survive the URL
        if i % 41 == 0:
            local = f"{first.lower()}.{ascii_slug(last)}"  # a non-ASCII address
        email = f"{local}@{domain}"
        if i % 29 == 0:
            email = ""  # a blank: the API answers 404, the row records it
        rows.append(
            {
                "id": i,
                "first_name": first,
                "last_name": last,
                "email": email,
                "domain": "" if i % 37 == 0 else domain,
                "employees": "" if i % 17 == 0 else rng.randint(5, 20000),
                "country": rng.choice(COUNTRIES),
            }
        )
    out = Path(__file__).resolve().parent.parent / "sample_data" / "people.csv"
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
