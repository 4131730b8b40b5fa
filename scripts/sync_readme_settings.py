"""Rewrite the README's settings table from serving/settings.py."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from serving.settings import settings_table  # noqa: E402

BLOCK = re.compile(r"(<!-- settings-table:start -->\n).*?(<!-- settings-table:end -->)", re.S)


def readme_table(text: str) -> str:
    match = BLOCK.search(text)
    if match is None:
        raise SystemExit("README.md has no settings-table markers")
    return text[match.end(1) : match.start(2)].strip()


if __name__ == "__main__":
    readme = ROOT / "README.md"
    text = readme.read_text()
    readme.write_text(BLOCK.sub(lambda m: m.group(1) + settings_table() + "\n" + m.group(2), text))
