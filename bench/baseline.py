"""The baseline enrich is measured against: a minimal hand-written aiohttp loop.

What a user would write in an afternoon instead of using enrich: one session, N fixed
workers, orjson, polars in and out, the same requests (log in, GET
/v1/people/{email}?domain=..., Accept and Bearer headers) and the same three fields. No journal, no
retries, no rate limit, no progress: the floor for the engine's own cost per row.

    python bench/baseline.py --base http://127.0.0.1:8787 --input people.csv --output out.parquet -c 64
"""

from __future__ import annotations

import argparse
import asyncio
from urllib.parse import quote

import aiohttp
import orjson
import polars as pl


async def main(base: str, rows: list[tuple[str, str]], concurrency: int) -> list[tuple]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        login = {"client_id": "demo-client", "client_secret": "demo-secret-2f8a"}
        async with session.post(f"{base}/auth/token", json=login) as resp:
            token = (await resp.json())["access_token"]
        headers = {"Accept": "application/json", "Authorization": f"Bearer {token}"}
        results: list[tuple] = [()] * len(rows)
        work = iter(enumerate(rows))

        async def worker() -> None:
            for i, (email, domain) in work:
                url = f"{base}/v1/people/{quote(email or '', safe='')}?domain={quote(domain or '', safe='')}"
                async with session.get(url, headers=headers) as resp:
                    body = await resp.read()
                    status = resp.status
                if status == 200:
                    doc = orjson.loads(body)
                    person, company = doc.get("person") or {}, doc.get("company") or {}
                    results[i] = ((person.get("name"), (person.get("employment") or {}).get("title"),
                                   company.get("employees"), status))  # fmt: skip
                else:
                    results[i] = (None, None, None, status)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results


def run(base: str, input_path: str, output: str, concurrency: int) -> int:
    df = pl.read_csv(input_path)
    rows = list(zip(df["email"].to_list(), df["domain"].to_list(), strict=True))
    results = asyncio.run(main(base, rows, concurrency))
    names = ["person.name", "person.employment.title", "company.employees", "_http_status"]
    columns = list(zip(*results, strict=True))
    out = df.with_columns(pl.Series(n, c, strict=False) for n, c in zip(names, columns, strict=True))
    out.write_parquet(output)
    return out.height


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    args = parser.parse_args()
    run(args.base, args.input, args.output, args.concurrency)
