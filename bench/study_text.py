"""Write a folder of general English text for the study's validation loss, from what every Python has.

The Python language reference topics that ``pydoc`` ships (``pydoc_data.topics``) are plain prose and code,
available offline. ``python bench/study_text.py runs/study_text`` writes one .txt file per topic.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(out: str) -> None:
    from pydoc_data.topics import topics

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    for name, text in sorted(topics.items()):
        lines = [ln.strip() for ln in text.splitlines() if len(ln.split()) >= 4]
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/study_text")
