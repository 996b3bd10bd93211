"""`vcache synth`: write the seeded synthetic benchmark (appearance / order / motion / speed)."""

from __future__ import annotations

from pathlib import Path

import typer

from vcache.cli.common import console, fail
from vcache.cli.tree import app


@app.command("synth")
def synth_cmd(
    out: Path = typer.Argument(..., help="Folder to write: videos/, splits/ (UCF-101 lists), classes.json."),
    train: int = typer.Option(200, "--train", help="Training videos in all, spread evenly over the classes."),
    test: int = typer.Option(100, "--test", help="Test videos in all (the measured benchmark: 600 / 200)."),
    task: str = typer.Option(
        "order",
        help="Which classes: order (20: digit A then digit B, order-aware models win), appearance (5: one "
        "digit), motion (4: a digit moving right/left/down/up), mixed (all 29 in one label space, tagged "
        "by family in classes.json), speed (2: a digit moving slow or fast in a random direction).",
    ),
    colours: str = typer.Option(
        "fixed",
        help="fixed: each digit its own colour (the measured design); pool: each video one colour from a "
        "pool shared by all classes, so only the digit's shape tells the class (for self-supervised "
        "pretraining with colour jitter); segment: a new pool colour at every background change, so that "
        "colour does not identify a video either (docs/synth.md).",
    ),
    glyphs: str = typer.Option(
        "fixed",
        help="fixed: one image per digit (the measured design); varied: each video its own handwritten "
        "sample of each digit it shows (scikit-learn's ~180 a digit), so that shape also tells videos apart.",
    ),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same videos, pixel for pixel."),
    frames: int = typer.Option(64, help="Frames per video; digit A fills the first half, B the second."),
    size: int = typer.Option(64, help="Frame side in pixels (square, even); digits are --sprite of it."),
    sprite: float = typer.Option(
        28 / 64,
        help="The digit sprite's side as a fraction of the frame side [28/64 = 0.4375, the measured design]; "
        '0.75 keeps digit shape readable in 32-px crops (docs/synth.md, docs/tables.md "Digit size").',
    ),
    fps: int = typer.Option(25, help="Frame rate written in the files."),
    gap: int = typer.Option(
        0,
        help="Blank frames centred on the midpoint (appearance/order families): a gap >= the frames a clip "
        "spans keeps every clip from seeing both events. 0 = the design measured in DESIGN.md.",
    ),
    crf: int = typer.Option(20, help="libx264 quality (lower = better, bigger); every frame is intra-coded."),
    workers: int = typer.Option(1, help="Processes that render and encode (same files for any value)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the dataset in a non-empty OUT."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no summary."),
    audio: bool = typer.Option(
        False, "--audio", help="Add an AAC track: a tone per digit while it is shown, silence in the gap."
    ),
) -> None:
    """Generate a labelled synthetic video set on which per-clip, mean-pooled and order-aware models differ.

    Read it with: vcache extract OUT/videos --format ucf101 --annotations OUT/splits. See docs/synth.md.
    """
    from vcache.data.synth import TASKS, generate

    if task not in TASKS:
        fail(f"--task {task!r}: choose one of {', '.join(TASKS)}", code=2)
    try:
        summary = generate(
            out,
            n_train=train,
            n_test=test,
            seed=seed,
            frames=frames,
            size=size,
            fps=fps,
            task=task,
            crf=crf,
            gap=gap,
            colours=colours,
            sprite=sprite,
            glyphs=glyphs,
            workers=workers,
            overwrite=overwrite,
            progress=not quiet,
        )
        if audio:
            from vcache.data.synth_audio import add_audio

            add_audio(out, seed=seed)
    except (FileExistsError, ValueError) as err:
        fail(str(err))
    if not quiet:
        mb = summary["bytes"] / 1e6
        console.print(
            f"wrote {train + test} videos ({summary['classes']} classes, task {task}) to {out} in "
            f"{summary['seconds']:.1f} s, {mb:.1f} MB"
        )
