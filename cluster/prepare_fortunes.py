"""Turns Debian's `fortunes` (one file per category, texts separated by lines holding only `%`) into JSON lines
{"text", "category"}: the example corpus of jobs/gpt-tiny.yaml.

Usage: python cluster/prepare_fortunes.py [SOURCE_DIR] [OUT_DIR]
"""

import json
import sys
from pathlib import Path

SOURCE = Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/games/fortunes")
OUT = Path(sys.argv[2] if len(sys.argv) > 2 else Path.home() / ".cache/orchestrator/data/fortunes")


def fortunes(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return [block.strip() for block in text.split("\n%\n") if block.strip() and block.strip() != "%"]


def main() -> None:
    categories = sorted(p for p in SOURCE.iterdir() if p.is_file() and not p.suffix and not p.is_symlink())
    if not categories:
        sys.exit(f"no fortune files in {SOURCE}: install Debian's 'fortunes' package")
    OUT.mkdir(parents=True, exist_ok=True)
    total = 0
    for path in categories:
        rows = [{"text": text, "category": path.name} for text in fortunes(path)]
        (OUT / f"{path.name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        total += len(rows)
    print(f"{total} fortunes in {len(categories)} categories -> {OUT}")


if __name__ == "__main__":
    main()
