"""The steps of STiCA Table 3 (end-to-end audio-visual pretraining), added to the plan by
`vcache.tables.plan.build`; `vcache.tables.stica_av` renders them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vcache.tables.runner import Step, at


def stica_t3(bl: Any) -> dict[str, list[Path]]:
    """STiCA Table 3 end to end: `vcache pretrain stica` with each loss / feature-crop setting on an
    audio-visual `synth --audio` set, features of the trained trunk (`extract --checkpoint`, eval mode),
    `probe linear`; controls: the same architecture at random init and the full setting at lr 0."""
    b, data = bl.b, bl.work / "data_av"
    synth = ["synth", str(data), "--train", str(b.t3_train), "--test", str(b.t3_test), "--task", b.task,
             "--seed", "0", "--frames", str(b.t3_frames), "--size", str(b.size), "--colours", b.colours,
             "--audio", "--overwrite", "-q"]  # fmt: skip
    dep = bl.plan.add(Step("synth_av", synth, [data / "classes.json"]))
    av = ["--format", "ucf101", "--annotations", str(data / "splits")]
    h = b.t3_input // 16  # map cells a side; 3 time steps at 24 frames
    sizes = ["--spatial-medium-size", str(max(1, h - 1)), "--spatial-small-size", str(max(1, h // 2))]
    sizes += ["--temporal-medium-size", "2", "--temporal-small-size", "1"]
    none = ["--spatial-medium", "0", "--spatial-small", "0", "--temporal-medium", "0"]
    none += ["--temporal-small", "0", "--include-full"]  # T_i = {L_i}: two large crops, no feature crop
    rows = {  # label -> pretraining options (None: random init); the paper's rows first
        "λ_va 0, λ_vv 1, no feature crops (video only)": ["--no-audio", *none],
        "λ_va 1, λ_vv 0, no feature crops": ["--audio", "--lambda-va", "1", "--lambda-vv", "0", *none],
        "λ_va 0.5, λ_vv 0.5, no feature crops": ["--audio", *none],
        "λ_va 0.5, λ_vv 0.5, feature crops": ["--audio"],
        "control: random init": None,
        "control: feature crops row at lr 0 (BN statistics only)": ["--audio", "--lr", "0"],
    }
    clip = ["--clip-frames", "24", "--frame-stride", "1", "--input-size", str(b.t3_input)]
    out: dict[str, list[Path]] = {}
    for i, (label, opts) in enumerate(rows.items()):
        out[label] = []
        for pseed, seed in bl.runs():
            tag = f"t3_r{i}_p{pseed}"
            ckpt = bl.work / "ckpt" / f"{tag}.pt"
            deps, weights = [dep], ["--init-seed", str(pseed), *clip]
            if opts is not None:
                argv = [
                    "pretrain",
                    "stica",
                    str(data / "videos"),
                    *av,
                    "--subset",
                    "train",
                    "--out",
                    str(ckpt),
                ]
                argv += ["--backbone", "r2plus1d_18_narrow", *clip, *sizes, "--width", str(b.stica_width)]
                argv += ["--epochs", str(b.t3_epochs), "--batch", str(b.t3_batch), "--warmup-epochs", "1"]
                argv += ["--lr", f"{b.t3_lr:g}", "--audio-base", "8", "--seed", str(pseed), "--workers", "0"]
                argv += [
                    "--bn-batches",
                    str(b.t3_bn_batches),
                    "--device",
                    "cpu",
                    "-q",
                    *opts,
                ]  # a later --lr wins
                state = Path(str(ckpt) + ".state")
                deps.append(bl.plan.add(Step(f"pretrain/{tag}", argv, [ckpt, state], [dep])))
                bl.ckpts.setdefault(f"stica_t3_r{i}", []).append(ckpt)  # loss curves (per epoch)
                weights = ["--checkpoint", str(ckpt)]
            stores = {}
            for subset in ("train", "test"):
                st = at(bl.stores, tag, f"{subset}_eval.zarr")  # a folder or a URL prefix (--stores)
                argv = ["extract", str(data / "videos"), *av, "--subset", subset, "--backbone"]
                argv += ["r2plus1d_18_narrow", "--out", str(st), *weights, "--mode", "eval"]
                argv += ["--layout", b.t3_layout, "--workers", "0", "-q"]
                stores[subset] = (bl.plan.add(Step(f"extract/{tag}/{subset}_eval", argv, [st], deps)), st)
            res = bl.work / "probes" / tag / f"linear_s{seed}"
            argv = ["probe", "linear", str(stores["train"][1]), str(stores["test"][1]), "--out", str(res)]
            argv += ["--seed", str(seed), "--epochs", str(b.probe_epochs)]
            argv += [] if b.probe_grid else ["--lr", "1e-3", "--wd", "0"]
            bl.plan.add(
                Step(f"probe/{tag}/linear_s{seed}", argv, [res], [stores["train"][0], stores["test"][0]])
            )
            out[label].append(res)
    return out
