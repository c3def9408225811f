#!/usr/bin/python3
"""Writes a Markdown file's first fenced code block of one language to a file.

The README's C++ and C examples are built and run by the test suite from the
README itself (examples/meson.build), so the front door cannot show code that
no longer compiles.
"""
import argparse
import sys
from pathlib import Path


def first_block(text: str, language: str) -> str:
    inside = False
    lines: list[str] = []
    for line in text.splitlines():
        if not inside and line.strip() == "```" + language:
            inside = True
        elif inside and line.strip() == "```":
            return "\n".join(lines) + "\n"
        elif inside:
            lines.append(line)
    raise LookupError(f"no complete ```{language} block")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("markdown", type=Path,
                        help="the Markdown file (README.md)")
    parser.add_argument("language",
                        help="the fence's language tag, e.g. cpp or c")
    parser.add_argument("output", type=Path,
                        help="the source file to write")
    args = parser.parse_args()
    try:
        text = args.markdown.read_text(encoding="utf-8")
        code = first_block(text, args.language)
    except (OSError, LookupError) as e:
        print(f"readme_snippet: {args.markdown}: {e}", file=sys.stderr)
        return 1
    args.output.write_text(code, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
