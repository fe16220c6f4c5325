"""The README, the docs and the shipped configs are part of the product: test them.

The generated pages (docs/cli.md from --help, docs/config.md from the config's schema, the bench
figures) are checked with cog: a stale page fails here, and `make cog` rewrites it."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from enrich import config as cfg
from enrich.cli import build_parser
from enrich.config import load_config
from enrich.tables import read_table

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text(encoding="utf-8")


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def sections(text: str) -> dict[str, str]:
    """``{heading: the text under it, up to the next heading}``, for the ``##`` and ``###`` headings."""
    parts = re.split(r"^#{2,3} (.+)$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def has_flag(text: str, flag: str) -> bool:
    """Whether ``text`` names ``flag`` as a whole flag: `-q` is not found in `--quiet`, nor `--journal` in `--no-journal`."""
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def subcommands() -> dict[str, object]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return dict(action.choices)  # type: ignore[arg-type]


# --- the README -------------------------------------------------------------------------------


def test_first_screen_names_the_two_commands() -> None:
    first_screen = "\n".join(README.splitlines()[:20])
    assert "make demo" in first_screen
    assert "make test" in first_screen
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test", "check", "enrich", "docs", "cog"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"Makefile has no `{target}` target"


def test_the_readme_stays_short() -> None:
    assert len(README) < 12_000, "the README is the first page: put reference and detail in docs/"


def test_the_readme_commands_table_names_every_command() -> None:
    table = README.split("## Commands", 1)[1].split("\n## ", 1)[0]
    for name in subcommands():
        assert f"| `enrich {name}" in table, f"`enrich {name}` is not in the README's table of commands"


def test_every_link_into_the_docs_leads_to_a_page() -> None:
    links = re.findall(r"\]\((docs/[^)#]+)", README)
    assert len(links) >= 10
    for link in links:
        assert (ROOT / link).is_file(), f"the README links to {link}, which does not exist"


# --- the generated references -----------------------------------------------------------------

CONFIG_SECTIONS = [
    ("Top-level keys", "", cfg.TOP_KEYS),
    ("`auth`", "auth.", cfg.AUTH_KEYS),
    ("`request`", "request.", cfg.REQUEST_KEYS),
    ("`rate_limit`", "rate_limit.", cfg.RATE_KEYS),
    ("`retry`", "retry.", cfg.RETRY_KEYS),
    ("`tls`", "tls.", cfg.TLS_KEYS),
]


@pytest.mark.parametrize(("heading", "prefix", "keys"), CONFIG_SECTIONS, ids=[s[0] for s in CONFIG_SECTIONS])
def test_every_config_key_is_documented_in_its_section(heading: str, prefix: str, keys: tuple[str, ...]) -> None:
    # The reference is generated from the schema, so this checks that the schema covers every key
    # the loader accepts, and no other, each in the table of its own section.
    section = sections(page("config.md"))[heading]
    rows = re.findall(r"^\| `([^`]+)` \|", section, re.MULTILINE)
    assert sorted(rows) == sorted(prefix + key for key in keys)


def test_every_config_key_has_a_description() -> None:
    for heading, body in sections(page("config.md")).items():
        for row in re.findall(r"^\| `[^`]+` \|.*$", body, re.MULTILINE):
            description = row.rsplit(" | ", 1)[-1].rstrip(" |")
            assert description.strip(), f"{heading}: no description in {row}"


def test_every_cli_option_is_documented() -> None:
    reference = sections(page("cli.md"))
    for name, sub in {"": build_parser(), **subcommands()}.items():
        title = f"`enrich {name}`" if name else "`enrich`"
        assert title in reference, f"docs/cli.md has no section for {title}"
        for action in sub._actions:  # type: ignore[attr-defined]
            for flag in action.option_strings:
                assert has_flag(reference[title], flag), f"`enrich {name} {flag}` is not in docs/cli.md"


@pytest.mark.parametrize(
    ("text", "flag", "found"),
    [
        ("-q, --quiet", "-q", True),
        ("--quiet", "-q", False),  # a short flag is not found inside a long one
        ("[--no-journal]", "--journal", False),  # nor a flag inside a longer flag
        ("[--journal PATH]", "--journal", True),
        ("--rate-limit RATE", "--rate", False),
    ],
)
def test_flags_are_matched_whole(text: str, flag: str, found: bool) -> None:
    assert has_flag(text, flag) is found


def test_the_generated_pages_are_up_to_date() -> None:
    from cogapp import Cog

    pages = sorted(str(p) for p in DOCS.glob("*.md"))
    cog = Cog()
    status = cog.main(["cog", "--check", "--check-fail-msg", "run `make cog`", "-I", str(ROOT / "scripts"), *pages])
    assert status == 0, "a generated part of docs/ is stale: run `make cog`"


# --- the site -------------------------------------------------------------------------------------


def test_every_page_is_in_the_nav() -> None:
    mkdocs = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8").split("\nhooks:", 1)[0])

    def names(nav: list[object]) -> list[str]:
        found: list[str] = []
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            found += names(value) if isinstance(value, list) else [str(value)]
        return found

    assert sorted(names(mkdocs["nav"])) == sorted(p.name for p in DOCS.glob("*.md"))


def test_the_site_builds_with_no_warning(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "config" / "index.html").is_file()


# --- what each page must say ------------------------------------------------------------------------


def test_exit_codes_are_documented() -> None:
    table = sections(page("operations.md"))["Exit codes"]
    epilog = build_parser().epilog or ""
    codes = set(re.findall(r"\b(\d+) ", epilog))
    assert codes >= {"0", "1", "2", "3", "70", "130"}
    for code in sorted(codes | {"0", "1", "2", "3", "70", "130"}):
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
