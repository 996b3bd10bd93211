"""STiCA Table 3 (loss weights and feature crops, end to end, audio-visual): its markdown section and the
orderings it should show. The steps are `vcache.tables.plan_av.stica_t3`'s; `render` takes this section
through its `extra` argument (this module reads markdown's cells, so markdown cannot import it)."""

from __future__ import annotations

from typing import Any

from vcache.tables.confidence import compare
from vcache.tables.markdown import Check, _table, fmt, stat
from vcache.tables.papers import PAPER_STICA_T3

__all__ = ["t3_section"]

VIDEO, CROSS, AV, FULL_ROW = list(PAPER_STICA_T3)
RANDOM, LR0 = "control: random init", "control: feature crops row at lr 0 (BN statistics only)"


def t3_section(layout: dict[str, Any]) -> tuple[str, list[Check]]:
    """The table (ours beside the paper's) and its orderings with bootstrap intervals."""
    t3 = layout.get("stica_t3") or {}
    md = "\n## STiCA Table 3: loss weights and feature crops (end to end, audio-visual)\n"
    if not t3:
        return md + "not run: it needs the generated audio-visual set (DATA unset).\n", []
    md += (
        "Cells: `vcache probe linear` on eval-mode features of the r2plus1d_18_narrow trunk after `vcache "
        "pretrain stica` (trunk, temporal-transformer head and, with λ_va > 0, the ResNet-9 audio encoder "
        "trained together) on a `vcache synth --audio` set (a tone per digit while it is shown). "
        '"No feature crops": T_i is the uncropped large crop only (`--include-full`, every crop count 0). '
        "Every row pools with the transformer head (the paper's ablations use average pooling unless noted). "
        "Paper: HMDB-51 finetuning accuracy after 100 epochs of Kinetics-400 pretraining.\n"
        + _table(
            ["λ_va, λ_vv, feature crops", "ours (linear)", "paper"],
            [
                [k, fmt(stat(v)), f"{PAPER_STICA_T3[k]:.1f}" if k in PAPER_STICA_T3 else "–"]
                for k, v in t3.items()
            ],
        )
    )
    checks = [
        ("STiCA T3: feature crops above none (audio-visual)", compare(t3[FULL_ROW], t3[AV])),
        ("STiCA T3: audio-visual above video only (no feature crops)", compare(t3[AV], t3[VIDEO])),
        ("STiCA T3: audio-visual above cross-modal only", compare(t3[AV], t3[CROSS])),
        ("STiCA T3: cross-modal only above video only", compare(t3[CROSS], t3[VIDEO])),
        ("STiCA T3: full method above random init", compare(t3[FULL_ROW], t3[RANDOM])),
        ("STiCA T3: full method above its lr-0 control", compare(t3[FULL_ROW], t3[LR0])),
    ]
    return md, checks
