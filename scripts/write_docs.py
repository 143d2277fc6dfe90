"""Writes the documentation's generated blocks from the code that is their source.

    python scripts/write_docs.py            # rewrite every generated block of README.md and docs/*.md
    python scripts/write_docs.py --check    # exit 1, naming the pages, when a committed block is out of date

A generated block sits between ``<!-- generated: NAME (scripts/write_docs.py) -->`` and ``<!-- end: NAME -->``;
:data:`BLOCKS` says which function writes each ``NAME``. Edit the source, never the block.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from envs.rewards import rewards_markdown  # noqa: E402
from runtime.observations import features_markdown  # noqa: E402

BLOCKS: dict[str, Callable[[], str]] = {
    "features": features_markdown,  # runtime.observations.FEATURES
    "rewards": rewards_markdown,  # envs.rewards.REWARD_TERMS
}
"""Each generated block's name and the function that writes its text."""

_BLOCK = re.compile(
    r"(?P<begin><!-- generated: (?P<name>[\w-]+) \(scripts/write_docs\.py\) -->\n)"
    r"(?P<body>.*?)"
    r"(?P<end>\n?<!-- end: (?P=name) -->)",
    re.DOTALL,
)


def pages(repo: Path = REPO) -> list[Path]:
    """The Markdown pages that may hold generated blocks: README.md and everything under docs/."""
    return [repo / "README.md", *sorted((repo / "docs").rglob("*.md"))]


def render(text: str) -> str:
    """``text`` with every generated block rewritten from its source.

    Raises:
        ValueError: If a block names no entry of :data:`BLOCKS`.
    """

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise ValueError(f"Generated block {name!r} has no source: scripts/write_docs.py knows {list(BLOCKS)}.")
        return f"{match['begin']}{BLOCKS[name]()}\n<!-- end: {name} -->"

    return _BLOCK.sub(replace, text)


def block_names(text: str) -> list[str]:
    """Names of the generated blocks in ``text``, in order."""
    return [match["name"] for match in _BLOCK.finditer(text)]


def stale_pages(repo: Path = REPO) -> list[Path]:
    """The pages whose generated blocks differ from what :func:`render` writes."""
    return [page for page in pages(repo) if page.is_file() and render(page.read_text()) != page.read_text()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report out-of-date pages (exit 1 if any)")
    args = parser.parse_args(argv)
    stale = stale_pages()
    for page in stale:
        relative = page.relative_to(REPO)
        if args.check:
            print(f"{relative}: generated blocks are out of date; run python scripts/write_docs.py", file=sys.stderr)
        else:
            page.write_text(render(page.read_text()))
            print(f"wrote {relative}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
