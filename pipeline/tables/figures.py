"""The figures of `reproduce-tables`: one bar chart (SCALE_ft top-1, mean ± std) per SCALE Table 8-11."""

from __future__ import annotations

from pathlib import Path


def write_figures(out: Path, t8: dict, t9: dict, t10: dict, t11: dict) -> list[Path]:
    """Write the PNGs of SCALE Tables 8-11 into OUT (cells: stat() tuples or None); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def bars(name: str, title: str, labels: list[str], stats: list) -> Path:
        fig, ax = plt.subplots(figsize=(max(3.5, 0.8 * len(labels) + 1.5), 3.0))
        m = [s[0] if s else float("nan") for s in stats]
        e = [s[1] if s else 0.0 for s in stats]
        ax.bar(range(len(m)), m, yerr=e, capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(m)), labels, rotation=30 if len(labels) > 4 else 0, fontsize=8)
        ax.set_ylabel("SCALE_ft top-1 (%)")
        ax.set_title(title, fontsize=9)
        lo = min((v for v in m if v == v), default=0.0)
        ax.set_ylim(max(0.0, lo - 10), None)
        fig.tight_layout()
        p = out / name
        fig.savefig(p, dpi=100)
        plt.close(fig)
        return p

    return [
        bars("scale_table8_losses.png", "SCALE Table 8: loss terms", list(t8), list(t8.values())),
        bars("scale_table9_mask.png", "SCALE Table 9: mask ratio", [f"{k:g}" for k in t9], list(t9.values())),
        bars(
            "scale_table10_capacity.png",
            "SCALE Table 10: width × depth",
            [f"{w}×{d}" for w, d in t10],
            list(t10.values()),
        ),  # fmt: skip
        bars(
            "scale_table11_views.png",
            "SCALE Table 11: views × batch",
            [f"{k}×2, b{bs}" for k, bs in t11],
            list(t11.values()),
        ),  # fmt: skip
    ]
