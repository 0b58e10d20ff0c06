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


def test_the_platform_s_own_time_over_a_stretch_is_the_difference_of_two_readings():
    from loadtests.overhead import Histogram, summary, table

    inf = float("inf")
    before = {"edge": Histogram(((0.001, 1.0), (0.01, 3.0), (inf, 3.0)), 0.01, 3.0)}
    after = {"edge": Histogram(((0.001, 2.0), (0.01, 10.0), (inf, 11.0)), 0.2, 11.0)}
    edge = summary(before, after)["edge"]
    assert edge["requests"] == 8 and round(edge["mean_ms"], 2) == 23.75
    assert 0.001 < edge["p50_ms"] / 1000 <= 0.01  # 1 of 8 below 1 ms, 6 more below 10 ms
    assert edge["p95_ms"] == 10.0  # the last bucket holds the rank: its lower bound, as Prometheus reads it
    assert "| 4 | - | " in table(
        {4: [{phase: {"requests": 0, "p50_ms": 0, "p95_ms": 0} for phase in ("ingress", "edge", "relay")}]}
    )
