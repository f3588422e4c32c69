"""General English text for `legibility finetune`: WikiText-2 paragraphs without unknown words.

WikiText-2 (Merity et al. 2016; Wikipedia Good and Featured articles, CC BY-SA 3.0) in its tokenized form
(``wiki.valid.tokens``, ``wiki.test.tokens``, as shipped by many public language-model repositories) marks
rare words as ``<unk>`` and splits punctuation off (``3 @.@ 5``, ``well @-@ known``, ``word ,``). This script
joins the punctuation back, drops headings and every sentence that holds an ``<unk>``, and writes one
paragraph per line:

    python bench/finetune_text.py wiki.valid.tokens wiki.test.tokens --out data/wikitext2

The finetune config holds out whole lines (paragraphs) of this folder for the held-out text loss and KL.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

_JOINS = [(" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", ".")]
_BEFORE = re.compile(r" ([.,;:!?)\]}'%]|'s|n't|'re|'ve|'ll|'d|'m)")
_AFTER = re.compile(r"([(\[{$]) ")
_QUOTES = re.compile(r'" ([^"]*?) "')
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def detokenize(line: str) -> str:
    """WikiText's tokenized text back to ordinary spacing."""
    text = line.strip()
    for a, b in _JOINS:
        text = text.replace(a, b)
    text = _BEFORE.sub(r"\1", text)
    text = _AFTER.sub(r"\1", text)
    return _QUOTES.sub(r'"\1"', text)


def paragraphs(raw: str) -> list[str]:
    """Paragraphs (headings dropped) made of their sentences without <unk>; short remnants dropped."""
    out = []
    for line in raw.splitlines():
        line = line.strip().lstrip("\ufeff")
        if not line or line.startswith("="):
            continue
        kept = [s for s in _SENTENCE.split(detokenize(line)) if "<unk>" not in s]
        text = " ".join(kept)
        if len(text.split()) >= 12:
            out.append(text)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="WikiText-2 tokenized files (wiki.*.tokens)")
    ap.add_argument("--out", required=True, help="folder to write one .txt per input file into")
    args = ap.parse_args(argv)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    for f in map(Path, args.files):
        paras = paragraphs(f.read_text(encoding="utf-8"))
        (root / f"{f.stem.replace('.', '_')}.txt").write_text("\n".join(paras) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
