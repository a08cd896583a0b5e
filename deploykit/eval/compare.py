"""Several evaluated models side by side: deltas against the first (the baseline), the
``--max-drop`` quality gates, and the tables (text, Markdown) and bar chart (PNG)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from deploykit.core.errors import UsageError, VerificationError
from deploykit.core.fsutil import atomic_write_bytes
from deploykit.eval import metrics

COLUMNS = [(metrics.PREFIX + k, k) for k in metrics.SCORES] + [
    (metrics.PREFIX + "samples_per_second", "samples/s")
]


@dataclass
class MaxDrop:
    """``METRIC=VALUE``: fail when a compared model is worse than the baseline by more."""

    metric: str
    value: float
    relative: bool = False

    def allowed(self, base: float) -> float:
        return abs(base) * self.value / 100 if self.relative else self.value


def parse_max_drop(text: str) -> MaxDrop:
    """``bleu-4=2`` (points of the x100 score) or ``rouge-l=5%`` (relative to the baseline)."""
    name, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError("expected METRIC=VALUE")
        metric = metrics.key(name)
        if metric == metrics.PREFIX + "runtime":
            raise ValueError("a drop in runtime is not a loss; gate on samples_per_second")
        value = value.strip()
        relative = value.endswith("%")
        number = float(value.rstrip("%"))
        if number < 0 or not number == number:  # negative or NaN
            raise ValueError(f"VALUE must be >= 0, got {value!r}")
    except ValueError as exc:
        raise UsageError(
            f"bad --max-drop {text!r}: {exc}",
            "use METRIC=VALUE, e.g. bleu-4=2 or rouge-l=5%; metrics: "
            + ", ".join(metrics.SCORES + metrics.SPEEDS[1:]),
        ) from None
    return MaxDrop(metric, number, relative)


def compare(runs: list[dict], gates: list[MaxDrop]) -> dict:
    """Deltas of each run against the first (the baseline) and the ``--max-drop`` verdicts."""
    base = runs[0]["metrics"]
    rows, failures = [], []
    for run in runs:
        m = run["metrics"]
        delta = {k: round(m[k] - base[k], 4) for k, _ in COLUMNS}
        rows.append({"label": run["label"], "metrics": m, "delta": delta})
    for run in runs[1:]:
        for g in gates:
            drop = base[g.metric] - run["metrics"][g.metric]
            limit = g.allowed(base[g.metric])
            if drop > limit + 1e-9:
                failures.append(
                    {
                        "model": run["label"],
                        "metric": g.metric,
                        "baseline": base[g.metric],
                        "value": run["metrics"][g.metric],
                        "drop": round(drop, 4),
                        "max_drop": round(limit, 4),
                    }
                )
    return {"baseline": runs[0]["label"], "rows": rows, "failures": failures, "ok": not failures}


def gate_error(cmp: dict | None) -> VerificationError | None:
    """The error a failed ``--max-drop`` gate raises (exit 7), else None."""
    if not cmp or cmp["ok"]:
        return None
    parts = [
        f"{f['model']} {f['metric']} dropped {f['drop']:g} (max {f['max_drop']:g}) "
        f"vs {cmp['baseline']}"
        for f in cmp["failures"]
    ]
    return VerificationError("quality gate failed: " + "; ".join(parts), f"see {cmp['markdown']}")


def _cell(row: dict, key: str, first: bool) -> str:
    value = f"{row['metrics'][key]:.2f}"
    return value if first else f"{value} ({row['delta'][key]:+.2f})"


def table_text(cmp: dict) -> str:
    """The comparison as an aligned text table (deltas against the baseline in brackets)."""
    head = ["model"] + [name for _, name in COLUMNS]
    body = [
        [r["label"] + (" (baseline)" if i == 0 else "")] + [_cell(r, k, i == 0) for k, _ in COLUMNS]
        for i, r in enumerate(cmp["rows"])
    ]
    widths = [max(len(x[c]) for x in [head, *body]) for c in range(len(head))]
    lines = [
        "  ".join(
            x[c].ljust(widths[c]) if c == 0 else x[c].rjust(widths[c]) for c in range(len(head))
        ).rstrip()
        for x in [head, *body]
    ]
    return "\n".join(lines)


def gates_text(cmp: dict) -> str:
    """The gates as one phrase: ``predict_bleu-4 1, predict_rouge-l 1%``."""
    return ", ".join(
        f"{g['metric']} {g['value']:g}{'%' if g['relative'] else ''}" for g in cmp["max_drop"]
    )


def table_markdown(cmp: dict) -> str:
    """The comparison as a Markdown table."""
    head = "| model | " + " | ".join(name for _, name in COLUMNS) + " |"
    rule = "| --- | " + " | ".join("---:" for _ in COLUMNS) + " |"
    rows = [
        "| "
        + r["label"].replace("|", "\\|")
        + (" (baseline)" if i == 0 else "")
        + " | "
        + " | ".join(_cell(r, k, i == 0) for k, _ in COLUMNS)
        + " |"
        for i, r in enumerate(cmp["rows"])
    ]
    lines = [head, rule, *rows]
    if cmp.get("max_drop"):
        verdict = (
            "passed"
            if cmp["ok"]
            else "FAILED: "
            + "; ".join(
                f"{f['model']} {f['metric']} dropped {f['drop']:g} (max {f['max_drop']:g})"
                for f in cmp["failures"]
            )
        )
        lines += ["", f"Max drop against {cmp['baseline']} ({gates_text(cmp)}): {verdict}"]
    return "\n".join(lines) + "\n"


def bar_chart(cmp: dict, path: Path) -> None:
    """Grouped bars: the four scores per model (written atomically as PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(metrics.SCORES)
    rows = cmp["rows"]
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(names) * max(1, len(rows)) / 2), 4))
    try:
        for i, r in enumerate(rows):
            xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(names))]
            vals = [r["metrics"][metrics.PREFIX + n] for n in names]
            bars = ax.bar(xs, vals, width, label=r["label"])
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylim(0, 120)
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel("score (x100)")
        samples = cmp.get("samples", "?")
        ax.set_title(f"deploykit eval: {samples} samples, baseline {cmp['baseline']}")
        ax.legend(fontsize=8, loc="upper center", ncol=min(len(rows), 4), frameon=False)
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=100)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, png.getvalue())
