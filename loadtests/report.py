"""Benchmark tables and plots, shared by the CPU (`make bench`) and GPU benchmarks."""

from __future__ import annotations

from pathlib import Path

from loadtests.workload import LevelResult, percentile

Results = dict[tuple[str, int], LevelResult]


def write_section(path: Path, name: str, body: str) -> None:
    """Put `body` between the `<!-- NAME:start -->` and `<!-- NAME:end -->` markers of `path` (the
    section is appended, with its markers, where they are missing); the rest of the file stays."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if start in text:
        before, _, rest = text.partition(start)
        text = before + section + rest.partition(end)[2]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def results_table(results: Results, levels: list[int], systems: tuple[str, ...]) -> str:
    head = (
        "| system | c | req/s | out tok/s | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | ITL p95 ms | e2e p50 s "
        "| errors |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for c in levels:
        for system in systems:
            r = results[(system, c)]
            rows.append(
                f"| {system} | {c} | {r.requests_per_s:.2f} | {r.output_tok_per_s:.1f} | "
                f"{percentile(r.ttft_s, 50) * 1000:.1f} | {percentile(r.ttft_s, 95) * 1000:.1f} | "
                f"{percentile(r.itl_s, 50) * 1000:.2f} | {percentile(r.itl_s, 95) * 1000:.2f} | "
                f"{percentile(r.e2e_s, 50):.2f} | {r.errors}/{r.requests} |"
            )
    return head + "\n".join(rows) + "\n"


def ratios_table(results: Results, levels: list[int], systems: tuple[str, ...]) -> str:
    """slmserve (systems[0]) over each other system: tok/s ratio, TTFT p50 difference and ratio, ITL p50 and
    p95 ratios."""
    ours, others = systems[0], systems[1:]
    columns = []
    for other in others:
        columns += [
            f"tok/s vs {other}",
            f"TTFT p50 - {other} (ms)",
            f"TTFT p50 vs {other}",
            f"ITL p50 vs {other}",
            f"ITL p95 vs {other}",
        ]
    out = "| c | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
    for c in levels:
        s = results[(ours, c)]
        cells = []
        for other in others:
            o = results[(other, c)]
            cells += [
                f"{s.output_tok_per_s / o.output_tok_per_s:.3f}",
                f"{(percentile(s.ttft_s, 50) - percentile(o.ttft_s, 50)) * 1000:+.1f}",
                f"{percentile(s.ttft_s, 50) / percentile(o.ttft_s, 50):.3f}",
                f"{percentile(s.itl_s, 50) / percentile(o.itl_s, 50):.3f}",
                f"{percentile(s.itl_s, 95) / percentile(o.itl_s, 95):.3f}",
            ]
        out += f"| {c} | " + " | ".join(cells) + " |\n"
    return out


def summarize(results: Results) -> dict[str, dict[str, float]]:
    """The figures the plots and the GPU run's JSON carry, keyed "system@c"."""
    return {
        f"{system}@{c}": {
            "tok_s": r.output_tok_per_s,
            "req_s": r.requests_per_s,
            "ttft_p50": percentile(r.ttft_s, 50),
            "ttft_p95": percentile(r.ttft_s, 95),
            "itl_p50": percentile(r.itl_s, 50),
            "itl_p95": percentile(r.itl_s, 95),
            "errors": r.errors,
        }
        for (system, c), r in results.items()
    }


def plot(results: Results, levels: list[int], systems: tuple[str, ...], path: Path) -> None:
    plot_summary(summarize(results), levels, systems, path)


def plot_summary(
    summary: dict[str, dict[str, float]], levels: list[int], systems: tuple[str, ...], path: Path, title: str = ""
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4))
    for system in systems:
        rows = [summary[f"{system}@{c}"] for c in levels]
        left.plot(levels, [row["tok_s"] for row in rows], marker="o", label=system)
        middle.plot(levels, [row["ttft_p50"] * 1000 for row in rows], marker="o", label=system)
        right.plot(levels, [row["itl_p95"] * 1000 for row in rows], marker="o", label=system)
    left.set(xscale="log", xlabel="concurrency", ylabel="output tokens/s", title="Throughput")
    middle.set(xscale="log", xlabel="concurrency", ylabel="TTFT p50 (ms)", title="Time to first token")
    right.set(xscale="log", xlabel="concurrency", ylabel="ITL p95 (ms)", title="Inter-token latency, p95")
    for axis in (left, middle, right):
        axis.set_xticks(levels, [str(c) for c in levels])
        axis.grid(alpha=0.3)
        axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
