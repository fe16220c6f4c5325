"""``enrich init``'s starter config: it loads, fits its table, and so does every setting it leaves out.

Each case writes a real table to a temporary folder and reads its schema as polars does;
the generated text is then loaded by the real loader and checked against the table.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from jsonschema import Draft7Validator

from enrich.config import TOP_KEYS, Config, config_from_dict
from enrich.schema import config_schema
from enrich.starter import starter_config

ENV = {"API_CLIENT_ID": "x1234", "API_CLIENT_SECRET": "y1234"}
VALIDATOR = Draft7Validator(config_schema())
# A left-out setting: `# key: value`, at any indentation. Prose comments never start that way.
LEFT_OUT = re.compile(r"^(\s*)# ([A-Za-z_]\w*):(?= |$)", re.MULTILINE)


@dataclass(frozen=True)
class Table:
    name: str
    frame: pl.DataFrame
    url_column: str  # the column the request URL should use
    left_out: frozenset[str]  # top-level keys of the `# key: value` lines

    def write(self, folder: Path) -> Path:
        path = folder / self.name
        writers: dict[str, Callable[[Path], Any]] = {
            ".csv": self.frame.write_csv,
            ".parquet": self.frame.write_parquet,
            ".ndjson": self.frame.write_ndjson,
        }
        writers[path.suffix](path)
        return path


def scan(path: Path) -> pl.LazyFrame:
    return {".csv": pl.scan_csv, ".parquet": pl.scan_parquet, ".ndjson": pl.scan_ndjson}[path.suffix](path)


def read_schema(path: Path) -> pl.Schema:
    return scan(path).collect_schema()


ROW_KEYS = frozenset({"retry", "timeout", "when", "skip_if_filled", "key"})
TABLES = [
    pytest.param(
        # the usual lead list: the email wins over the domain and the id; zip read as int gets input_types
        Table(
            "people.csv",
            pl.DataFrame(
                {
                    "id": [1, 2],
                    "name": ["Ada", "Grace"],
                    "email": ["ada@example.com", None],
                    "domain": ["example.com", "navy.mil"],
                    "zip": [2134, 10001],
                }
            ),
            "email",
            ROW_KEYS | {"input_types"},
        ),
        id="csv-with-email",
    ),
    pytest.param(
        # one column: it is the URL's, and the examples still load
        Table("ids.parquet", pl.DataFrame({"id": [7, 8, 9]}), "id", ROW_KEYS),
        id="parquet-only-id",
    ),
    pytest.param(
        # names no placeholder can hold are left out of templates; spaces and dashes are fine
        Table(
            "odd names.csv",
            pl.DataFrame(
                {
                    "first name": ["Ada"],
                    "a|b": [1],
                    " padded ": ["x"],
                    "{braced}": ["y"],
                    'say "hi"': ["z"],
                    "order": ["o1"],
                    "E-Mail Address": ["ada@example.com"],
                }
            ),
            "E-Mail Address",
            ROW_KEYS,
        ),
        id="csv-odd-column-names",
    ),
    pytest.param(
        # a list column cannot go in a URL; the website does
        Table(
            "companies.ndjson",
            pl.DataFrame({"emails": [["a@x.io"]], "Website": ["x.io"], "name": ["X"]}),
            "Website",
            ROW_KEYS,
        ),
        id="ndjson-nested-column",
    ),
    pytest.param(
        # nothing identifying: the first column
        Table("cities.csv", pl.DataFrame({"city": ["Oslo"], "country": ["NO"]}), "city", ROW_KEYS),
        id="csv-no-identifying-column",
    ),
]


def load(text: str, path: Path) -> Config:
    """Load a config text as `enrich run` would for the table at ``path``, keys the loader knows yet only."""
    data = yaml.safe_load(text)
    config = config_from_dict({k: v for k, v in data.items() if k in TOP_KEYS}, env=ENV)
    config.check_columns(list(read_schema(path)), path.name)
    return config


@pytest.mark.parametrize("table", TABLES)
def test_the_starter_loads_and_fits_its_table(table: Table, tmp_path: Path) -> None:
    path = table.write(tmp_path)
    text = starter_config(path, read_schema(path))
    data = yaml.safe_load(text)

    assert [e.message for e in VALIDATOR.iter_errors(data)] == []
    assert set(data) <= set(TOP_KEYS)  # as written, every key is one the loader already knows
    config = load(text, path)
    assert (data["input"], data["output"]) == (str(path), f"out/{path.stem}_enriched.parquet")
    assert data["request"]["url"] == f"https://api.example.com/v1/lookup/{{{{{table.url_column}}}}}"
    assert config.request.url.columns == {table.url_column}
    assert (config.concurrency, str(config.rate_limit), config.fields) == (8, "5/s", None)
    assert config.auth is not None and config.auth.body == {"client_id": "x1234", "client_secret": "y1234"}


@pytest.mark.parametrize("table", TABLES)
def test_every_left_out_setting_works_when_switched_on(table: Table, tmp_path: Path) -> None:
    path = table.write(tmp_path)
    text = starter_config(path, read_schema(path))
    top_level = {m.group(2) for m in LEFT_OUT.finditer(text) if not m.group(1)}
    switched_on = LEFT_OUT.sub(r"\1\2:", text)
    data = yaml.safe_load(switched_on)

    assert top_level == table.left_out
    assert set(data) <= set(TOP_KEYS)
    assert [e.message for e in VALIDATOR.iter_errors(data)] == []
    assert set(data["request"]) == {"method", "url", "headers", "body"} | (
        {"params"} if table.frame.width > 1 else set()
    )
    config = load(switched_on, path)
    assert config.fields is not None and len(config.fields) == 2
    scan(path).filter(pl.sql_expr(data["when"])).collect()  # the `when` example is polars SQL that runs here
    assert set(data["skip_if_filled"]) <= set(read_schema(path))


def test_a_column_name_that_breaks_lines_stays_in_its_comment(tmp_path: Path) -> None:
    # A CSV header may hold a quoted line break; it must not end a comment and become YAML.
    path = tmp_path / "x.csv"
    path.write_text('"line\nbreak",id\n1,2\n', encoding="utf-8")
    text = starter_config(path, read_schema(path))
    assert "'line\\nbreak'" in text
    assert yaml.safe_load(text)["request"]["url"].endswith("{{id}}")
    load(text, path)


@pytest.mark.parametrize("table", TABLES)
def test_the_steps_starter_loads_and_its_chain_and_waterfall_work_when_switched_on(
    table: Table, tmp_path: Path
) -> None:
    path = table.write(tmp_path)
    text = starter_config(path, read_schema(path), steps=True)
    data = yaml.safe_load(text)
    assert [e.message for e in VALIDATOR.iter_errors(data)] == []
    config = load(text, path)
    assert [s.name for s in config.steps] == ["lookup"]
    assert config.steps[0].request.url.columns == {table.url_column}
    assert config.steps[0].auth is not None and config.steps[0].auth_key == "auths.main"
    # Every `# ` line of `auths` and `steps` switched on: the fallback auth, the chain, the waterfall.
    block = text[text.index("auths:") : text.index("\nconcurrency:")]
    on = text.replace(block, re.sub(r"^(\s*)# ", r"\1", block, flags=re.MULTILINE))
    switched = yaml.safe_load(on)
    assert [e.message for e in VALIDATOR.iter_errors(switched)] == []
    config = config_from_dict(
        {k: v for k, v in switched.items() if k in TOP_KEYS}, env={**ENV, "FALLBACK_API_KEY": "k1"}
    )
    config.check_schema(read_schema(path), path.name)  # the chain reads `lookup`'s field: allowed
    assert [(s.name, s.cost) for s in config.steps] == [("lookup", 0), ("company", 0), ("fallback", 1)]
    assert config.steps[2].field_columns == config.steps[0].field_columns[:1]  # the waterfall fills `title`
    assert config.steps[1].request.url.columns <= set(config.steps[0].field_columns)
    assert {s.auth_key for s in config.steps} == {"auths.main", "auths.fallback"}
