"""mkdocs hooks for the docs site (mkdocs.yml, `hooks:`).

The performance page shows the chart that `make bench` draws into bench/results/; it is
published from there as assets/throughput.png, so the site never shows a stale copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
CHARTS = {"assets/throughput.png": ROOT / "bench" / "results" / "throughput.png"}


def on_files(files: Files, config: Any) -> Files:
    for uri, source in CHARTS.items():
        if source.exists():
            files.append(File.generated(config, uri, abs_src_path=str(source)))
    return files
