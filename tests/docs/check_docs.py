#!/usr/bin/python3
"""Checks of the documentation (meson suite 'docs').

Usage: check_docs.py links ROOT
       check_docs.py size FILE MAX_BYTES

links: every relative markdown link or image, [text](path) or
  [text](path#anchor), in ROOT's README.md, CHANGELOG.md, tests/README.md
  and docs/*.md must name a file or directory that exists (relative to the
  file that links it), and an anchor into a markdown file must be one of
  its headings (GitHub's slugs). Links in fenced code blocks and inline
  code are not links; http(s) and mailto targets are not checked.
size: FILE must be at most MAX_BYTES bytes.

Exit status: 0 ok, 1 a check failed (each failure on stderr), 2 bad usage.
"""

from __future__ import annotations

import pathlib
import re
import sys

LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+).*?\1")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def documents(root: pathlib.Path) -> list[pathlib.Path]:
    docs = [root / "README.md", root / "CHANGELOG.md",
            root / "tests" / "README.md"]
    docs += sorted((root / "docs").glob("*.md"))
    return docs


def prose_lines(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation
    other than '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"[`*]", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text).lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def check_links(root: pathlib.Path) -> list[str]:
    root = root.resolve()
    errors = []
    for doc in documents(root):
        if not doc.is_file():
            errors.append(f"{doc.relative_to(root)}: missing")
            continue
        for number, line in prose_lines(doc):
            for target in LINK.findall(CODE_SPAN.sub("", line)):
                if re.match(r"(https?|mailto):", target):
                    continue
                where = f"{doc.relative_to(root)}:{number}"
                path, _, anchor = target.partition("#")
                dest = (doc.parent / path).resolve() if path else doc
                if not dest.exists():
                    errors.append(f"{where}: link to '{target}': "
                                  f"{path} does not exist")
                elif (anchor and dest.suffix == ".md"
                      and anchor not in anchors(dest)):
                    errors.append(f"{where}: link to '{target}': no "
                                  f"heading with anchor #{anchor} in "
                                  f"{dest.relative_to(root.resolve())}")
    return errors


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "links":
        errors = check_links(pathlib.Path(argv[2]))
        for e in errors:
            print(f"check_docs: {e}", file=sys.stderr)
        return 1 if errors else 0
    if len(argv) == 4 and argv[1] == "size" and argv[3].isdigit():
        path, limit = pathlib.Path(argv[2]), int(argv[3])
        if not path.is_file():
            print(f"check_docs: missing {path}", file=sys.stderr)
            return 1
        size = path.stat().st_size
        if size > limit:
            print(f"check_docs: {path} is {size} bytes, more than {limit}: "
                  "move detail into docs/", file=sys.stderr)
            return 1
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
