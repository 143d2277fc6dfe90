"""The documentation: generated blocks equal what their source code writes, and relative links resolve."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_SPEC = importlib.util.spec_from_file_location("write_docs", REPO / "scripts" / "write_docs.py")
write_docs = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(write_docs)

LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_generated_blocks_match_their_source() -> None:
    stale = [str(page.relative_to(REPO)) for page in write_docs.stale_pages()]
    assert not stale, f"{stale}: generated blocks differ from their source; run python scripts/write_docs.py"


def test_every_block_is_written_on_some_page() -> None:
    written = {name for page in write_docs.pages() for name in write_docs.block_names(page.read_text())}
    assert written == set(write_docs.BLOCKS)


def test_a_hand_edited_block_is_stale_and_rewritten(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n\n<!-- generated: features (scripts/write_docs.py) -->\n| edited by hand |\n<!-- end: features -->\n"
    )
    assert write_docs.stale_pages(tmp_path) == [page]
    rewritten = write_docs.render(page.read_text())
    assert "edited by hand" not in rewritten and "`forecast_gap_g`" in rewritten
    page.write_text(rewritten)
    assert write_docs.stale_pages(tmp_path) == []


def test_a_block_without_source_is_an_error() -> None:
    with pytest.raises(ValueError, match="'nothing' has no source"):
        write_docs.render("<!-- generated: nothing (scripts/write_docs.py) -->\n\n<!-- end: nothing -->")


@pytest.mark.parametrize("page", write_docs.pages(), ids=lambda page: str(page.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    targets = [t.split("#")[0] for t in LINK.findall(text) if not re.match(r"[a-z]+:|#", t)]
    broken = [t for t in targets if t and not (page.parent / t).exists()]
    assert not broken, f"{page.relative_to(REPO)} links to missing files: {broken}"
