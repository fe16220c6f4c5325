"""The README and the shipped configs are part of the product: test them."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from enrich import config as cfg
from enrich.cli import build_parser
from enrich.config import load_config
from enrich.tables import read_table

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_first_screen_names_the_two_commands() -> None:
    first_screen = "\n".join(README.splitlines()[:20])
    assert "make demo" in first_screen
    assert "make test" in first_screen
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test", "check", "enrich"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"Makefile has no `{target}` target"


@pytest.mark.parametrize(
    ("section", "keys"),
    [
        ("", cfg.TOP_KEYS),
        ("auth.", cfg.AUTH_KEYS),
        ("request.", cfg.REQUEST_KEYS),
        ("retry.", cfg.RETRY_KEYS),
        ("tls.", cfg.TLS_KEYS),
    ],
)
def test_every_config_key_is_documented(section: str, keys: tuple[str, ...]) -> None:
    reference = README.split("## Config reference", 1)[1].split("\n## ", 1)[0]
    missing = [k for k in keys if not re.search(rf"^\s*{k}:", reference, re.MULTILINE)]
    assert not missing, f"README's config reference lacks {section}{missing}"


def test_every_cli_option_is_documented() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    for name, sub in subparsers.choices.items():  # type: ignore[attr-defined]
        for action in sub._actions:
            for flag in action.option_strings:
                if flag in ("-h", "--help"):
                    continue
                assert flag in README, f"`enrich {name} {flag}` is not in the README"


def test_exit_codes_are_documented() -> None:
    table = README.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    for code in ("0", "1", "2", "3", "70", "130"):
        assert f"| {code} |" in table


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    env_names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", path.read_text(encoding="utf-8")))
    env = {name: f"https://value-of-{name.lower()}.example" if "URL" in name else "x" * 8 for name in env_names}
    config = load_config(path, env=env)
    assert config.columns_used, f"{path.name} sends the same request for every row"


def test_demo_config_fits_the_sample() -> None:
    config = load_config(ROOT / "configs/demo.yaml", env={"DEMO_CLIENT_ID": "id-x", "DEMO_CLIENT_SECRET": "secret-x"})
    assert config.input is not None
    df = read_table(ROOT / config.input)
    config.check_columns(df.columns, config.input.name)
    assert 200 <= df.height <= 1000
    assert df["email"].null_count() > 0, "the sample should have blanks"
    assert any(not e.isascii() for e in df["email"].drop_nulls()), "the sample should have non-ASCII"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow
@pytest.mark.skipif(not _port_free(8787), reason="port 8787 is taken; `make demo` needs it")
def test_make_demo_runs_as_the_readme_says(tmp_path: Path) -> None:
    out = ROOT / "out" / "people_enriched.parquet"
    made = [out, *(out.with_name(out.name + suffix) for suffix in (".journal", ".summary.json"))]
    for path in made:  # a first run, as on a fresh clone: every call made
        path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHON": sys.executable}
    try:
        proc = subprocess.run(["make", "-s", "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        frame = pl.read_parquet(out) if out.exists() else None
    finally:
        for path in made:  # and leave none behind, so the user's own `make demo` is a first run too
            path.unlink(missing_ok=True)
    assert proc.returncode == 0, proc.stderr
    assert frame is not None
    assert "enriched 300 rows" in proc.stderr
    assert "_http_status" in proc.stdout
    assert "283 made" in proc.stderr  # a first run: nothing from a journal
    assert frame.height == 300
    assert frame.columns[-4:] == ["_http_status", "_error", "_attempts", "_latency_ms"]
    assert frame["_http_status"].drop_nulls().to_list().count(200) > 250
    assert _port_free(8787), "make demo left the demo API running"
