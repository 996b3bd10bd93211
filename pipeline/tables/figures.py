"""The figures of `reproduce-tables`: one bar chart (SCALE_ft top-1, mean ± std) per SCALE Table 8-11, and
the loss curve of every pretraining run (issue 14)."""

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


def read_losses(ckpts: dict[str, list[Path]]) -> dict[str, dict[str, list[float]]]:
    """{column key: {checkpoint stem: losses}} from the checkpoints' `pretrain.losses` (per step: CVRL,
    SVT) or, without it, their `history` (per epoch: end-to-end STiCA)."""
    import torch

    out: dict[str, dict[str, list[float]]] = {}
    for key, paths in ckpts.items():
        for p in paths:
            if Path(p).exists():
                cfg = torch.load(p, map_location="cpu", weights_only=True).get("config") or {}
                losses = (cfg.get("pretrain") or {}).get("losses")
                losses = losses or [h["loss"] for h in cfg.get("history") or [] if "loss" in h]
                if losses:
                    out.setdefault(key, {})[Path(p).stem] = [float(x) for x in losses]
    return out


def write_loss_curves(out: Path, ckpts: dict[str, list[Path]], batch: int) -> Path | None:
    """Save every pretraining run's loss curve (OUT/pretrain_losses.json) and plot them, one panel per
    method, with CVRL's chance level ln(2N - 1) for a batch of N videos (OUT/pretrain_losses.png)."""
    import json
    import math

    curves = read_losses(ckpts)
    if not curves:
        return None
    chance = math.log(2 * batch - 1)
    (out / "pretrain_losses.json").write_text(
        json.dumps({"cvrl_chance": chance, "curves": curves}, indent=1) + "\n"
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = {
        "cvrl": [k for k in curves if "svt" not in k and not k.startswith("stica")],
        "svt": [k for k in curves if "svt" in k],
        "stica": [k for k in curves if k.startswith("stica")],
    }
    methods = {m: ks for m, ks in methods.items() if ks}
    fig, axes = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 3.4), squeeze=False)
    for ax, (method, keys) in zip(axes[0], methods.items(), strict=True):
        for i, key in enumerate(keys):
            for j, losses in enumerate(curves[key].values()):
                mark = "o" if len(losses) < 20 else None  # a run of a few steps is a few points
                ax.plot(range(1, len(losses) + 1), losses, color=f"C{i}", lw=1, marker=mark, ms=3,
                        label=key if j == 0 else None)  # fmt: skip
        if method == "cvrl":
            ax.axhline(chance, color="k", ls="--", lw=1, label=f"chance ln(2·{batch}-1) = {chance:.2f}")
        ax.set_xlabel("epoch (loss averaged over its steps)" if method == "stica" else "step")
        ax.set_ylabel("loss")
        ax.set_title(f"{method.upper()} pretraining loss (every seed)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "pretrain_losses.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
