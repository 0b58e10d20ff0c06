"""The benchmark report helper: each benchmark rewrites only its own marked section of docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path

from loadtests.report import write_section


def test_a_section_is_replaced_in_place_or_appended(tmp_path: Path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nintro\n\n<!-- a:start -->\nold a\n<!-- a:end -->\n\nhand-written notes\n")
    write_section(doc, "a", "## A\nnew a\n")
    write_section(doc, "b", "## B\n")
    write_section(doc, "b", "## B, again\n")
    assert doc.read_text() == (
        "# Benchmarks\n\nintro\n\n<!-- a:start -->\n## A\nnew a\n<!-- a:end -->\n\n"
        "hand-written notes\n\n<!-- b:start -->\n## B, again\n<!-- b:end -->\n"
    )
