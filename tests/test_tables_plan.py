"""The default plan's controls (issue 14), read from its command lines without running them."""

from __future__ import annotations

from pathlib import Path

from vcache.tables import FULL, QUICK, build
from vcache.tables.plan import svt_momentum


def test_default_plan_has_controls_seeds_and_the_shape_task(tmp_path: Path) -> None:
    bl, layout = build(FULL, tmp_path)
    steps = bl.plan.steps
    synth = steps["synth"].argv
    assert synth[synth.index("--colours") + 1] == "pool" and synth[synth.index("--test") + 1] == "300"
    # three pretraining seeds for every pretrained column, the lr-0 control among them
    assert all(len(v) == 3 for v in layout["pretrain"].values())
    bn = steps["pretrain/r3d_cvrl_bn_p2"].argv
    assert bn[bn.index("--lr") + 1] == "0" and bn[bn.index("--seed") + 1] == "2"
    cvrl = steps["pretrain/r3d_cvrl_p2"].argv
    # the budget measured to leave chance: colour-jitter strength in the command line (the cache key)
    assert cvrl[cvrl.index("--jitter-strength") + 1] == "0.5" and cvrl[cvrl.index("--batch-size") + 1] == "16"
    assert bn == [a.replace("r3d_cvrl_p2", "r3d_cvrl_bn_p2") for a in cvrl] + ["--lr", "0"]  # same run
    # random init: the pretraining seed is the init seed
    rnd = steps["extract/r3d_random_p1/test_eval"].argv
    assert rnd[rnd.index("--init-seed") + 1] == "1"
    # each cell's runs pair pretraining seed r with stage-2 seed r; k-NN one run per pretraining seed
    lin = layout["main"][("r3d_cvrl", "linear")]
    assert [p.parent.name + "/" + p.name for p in lin] == [f"r3d_cvrl_p{r}/linear_s{r}" for r in range(3)]
    assert len(layout["main"][("r3d_cvrl", "knn")]) == 3
    # SVT: momentum suited to its steps, the student probed from the same run
    svt = steps["pretrain/vit_svt_p0"].argv
    assert float(svt[svt.index("--momentum-teacher") + 1]) == svt_momentum(FULL.svt_steps) < 0.996
    student = steps["extract/vit_svt_student_p0/test_eval"]
    assert student.argv[student.argv.index("--checkpoint") + 1].endswith("vit_svt_p0.student.pt")
    assert "pretrain/vit_svt_p0" in student.deps


def test_svt_momentum_rule() -> None:
    assert svt_momentum(6) == 0.9 and svt_momentum(100) == 0.9
    assert abs(svt_momentum(1000) - 0.99) < 1e-12 and svt_momentum(10**6) == 0.996
    assert QUICK.pretrain_seeds == (0,) and FULL.threads == 2


def test_quick_shares_the_fixed_lr_run_with_the_main_cell(tmp_path: Path) -> None:
    """Without the lr / wd grid the ablations' default-config SCALE_ft run is the main one (one step); with
    the grid (default budget) it is a separate run at the fixed values."""
    _, quick = build(QUICK, tmp_path)
    assert quick["t8"]["SET + MCM"] == quick["main"][("r3d_cvrl", "scale_ft")]
    _, full = build(FULL, tmp_path)
    assert set(full["t8"]["SET + MCM"]).isdisjoint(full["main"][("r3d_cvrl", "scale_ft")])
    assert all(p.name.endswith("_fixed") for p in full["t8"]["SET + MCM"])


def test_stica_table3_rows_and_controls(tmp_path: Path) -> None:
    """STiCA Table 3: every row pretrains end to end on the audio-visual set (its own synth step), with the
    paper's loss weights and crop settings; the lr-0 control is the full row's run at lr 0; random init
    takes the init seed and the trained clips; three runs a row in the default budget."""
    bl, layout = build(FULL, tmp_path)
    steps = bl.plan.steps
    assert "--audio" in steps["synth_av"].argv
    t3 = layout["stica_t3"]
    assert len(t3) == 6 and all(len(v) == 3 for v in t3.values())
    video, cross, av, full = (steps[f"pretrain/t3_r{i}_p1"].argv for i in range(4))
    assert "--no-audio" in video and "--include-full" in video and "--include-full" not in full
    assert cross[cross.index("--lambda-vv") + 1] == "0" and "--audio" in av and "--audio" in full
    assert av == [a.replace("t3_r3", "t3_r2") for a in full] + av[len(full) :]  # + the no-crop options
    bn = steps["pretrain/t3_r5_p1"].argv
    assert bn == [a.replace("t3_r3", "t3_r5") for a in full] + ["--lr", "0"]
    assert "pretrain/t3_r4_p1" not in steps  # random init: nothing to pretrain
    rnd = steps["extract/t3_r4_p2/test_eval"].argv
    assert rnd[rnd.index("--init-seed") + 1] == "2" and rnd[rnd.index("--input-size") + 1] == "32"
    assert "--checkpoint" in steps["extract/t3_r3_p2/test_eval"].argv
    assert QUICK.t3_train // QUICK.t3_batch == 1  # QUICK: one optimiser step a run


def test_the_budgets_sprite_reaches_synth_only_when_it_is_not_the_synth_default(tmp_path: Path) -> None:
    """Budget.sprite becomes `synth --sprite` (the default budget: 0.75, 48-px digits); at synth's own
    28/64 the option is left out, so the command lines (cache keys) of runs made before it existed hold."""
    from dataclasses import replace

    argv = build(FULL, tmp_path)[0].plan.steps["synth"].argv
    assert argv[argv.index("--sprite") + 1] == "0.75"
    small = build(replace(FULL, sprite=28 / 64), tmp_path)[0].plan.steps["synth"].argv
    assert "--sprite" not in small
