"""Reliability end to end: bad inputs, bad configs and models, kills and interrupts.

The corpus of bad files is generated here (a few lines each) rather than committed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from lrp_cli.images import load_image
from lrp_cli.outputs import temporary_path, temporary_writer

from .test_cli import (
    SIZE,
    error_lines,
    lrp_command,
    records,
    run,
    tiny_model,
    tiny_weights,
    write_image,
    write_npy,
)

__all__ = ["tiny_weights"]  # a fixture used here

BAD_NAMES = [
    "empty.jpg",
    "truncated.jpg",
    "text.jpg",
    "page.png",
    "dangling.png",
    "bomb.png",
    "wrong-shape.npy",
    "nan.npy",
    "integers.npy",
    "objects.npy",
]


def make_good(folder: Path) -> list[str]:
    """Awkward but valid images (and a .npy) that must all be explained."""
    write_image(folder / "rgb.jpg", quality=90)
    write_image(folder / "sub" / "rgb.png", seed=1)
    Image.fromarray(np.arange(64 * 48, dtype=np.uint8).reshape(48, 64), "L").save(
        folder / "grey.png"
    )
    Image.fromarray(np.arange(50 * 40, dtype=np.uint16).reshape(40, 50) * 30).save(
        folder / "sixteen-bit.png"
    )
    rgba = np.random.default_rng(2).integers(0, 256, (30, 40, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "transparent.png")
    Image.new("CMYK", (40, 30), (10, 200, 30, 5)).save(folder / "cmyk.jpg")
    frames = [Image.new("P", (20, 20), i) for i in range(3)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "one-pixel.png")
    Image.new("RGB", (1, 300), (10, 200, 10)).save(folder / "thin.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: must come out upright
    write_image(folder / "rotated.jpg", seed=3, exif=exif)
    write_npy(folder / "tensor.npy", seed=4)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def make_bad(folder: Path) -> None:
    """One file per kind of trouble; each must fail alone with one line."""
    (folder / "empty.jpg").touch()
    jpeg = write_image(folder / "whole.jpg", size=(64, 64), seed=5).read_bytes()
    (folder / "whole.jpg").unlink()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "text.jpg").write_text("this is not a picture\n")
    (folder / "page.png").write_text("<!DOCTYPE html><html><body>404</body></html>")
    (folder / "dangling.png").symlink_to(folder / "gone.png")
    Image.new("RGB", (300, 300)).save(folder / "bomb.png")  # over --max-pixels 50000
    np.save(folder / "wrong-shape.npy", np.zeros((3, SIZE, SIZE + 1), np.float32))
    nan = np.zeros((3, SIZE, SIZE), np.float32)
    nan[0, 0, 0] = np.nan
    np.save(folder / "nan.npy", nan)
    np.save(folder / "integers.npy", np.zeros((3, SIZE, SIZE), np.int64))
    np.save(folder / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_bad_inputs_fail_alone_and_never_change_the_good_outputs(tmp_path, tiny_weights):
    corpus, clean = tmp_path / "corpus", tmp_path / "clean"
    good = make_good(corpus)
    make_bad(corpus)
    shutil.copytree(corpus, clean, symlinks=True)
    for name in BAD_NAMES:
        (clean / name).unlink()
    options = [*tiny_model(tiny_weights), "--batch-size", "3", "--max-pixels", "50000", "--overlay"]

    reference = run(["explain", clean, *options, "-o", tmp_path / "out-clean"])
    assert reference.exit_code == 0, reference.stderr
    result = run(["explain", corpus, *options, "-o", tmp_path / "out", "--jsonl", "-"])

    assert result.exit_code == 1
    errors = error_lines(result.stderr)
    assert len(errors) == len(BAD_NAMES), errors
    for name in BAD_NAMES:
        (line,) = [e for e in errors if f"{name}:" in e]
        assert len(line) < 400
    assert "--max-pixels" in next(e for e in errors if "bomb.png" in e)
    found = records(result.stdout)
    assert len(found) == len(good) + len(BAD_NAMES)
    failed = {Path(r["input"]).name for r in found if r["status"] == "failed"}
    assert failed == set(BAD_NAMES)
    assert f"({len(good)} heatmaps, {len(BAD_NAMES)} failed)" in result.stderr
    # the good files' outputs are byte for byte those of a run without the bad files
    assert tree(tmp_path / "out") == tree(tmp_path / "out-clean")
    assert len(tree(tmp_path / "out")) == 3 * len(good)
    for record in (r for r in found if r["status"] == "explained"):
        # whatever the odd format, size or rotation: heatmaps at the model's resolution,
        # overlays at the upright photo's (a .npy's at the model's)
        path = record["input"]
        photo = (SIZE, SIZE) if path.endswith(".npy") else load_image(path).size
        for kind, size in (("heatmap", (SIZE, SIZE)), ("overlay", photo)):
            with Image.open(record["outputs"][kind]) as image:
                assert image.size == size and image.mode == "RGB", (path, kind)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file_is_one_line(tmp_path, tiny_weights):
    locked = write_image(tmp_path / "locked.png")
    locked.chmod(0)
    result = run(["explain", locked, *tiny_model(tiny_weights), "-o", tmp_path / "out"])
    assert result.exit_code == 1
    (line,) = error_lines(result.stderr)
    assert "locked.png" in line and "permission denied" in line


def test_folder_without_images(tmp_path, tiny_weights):
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.txt").write_text("no images here")
    result = run(["explain", tmp_path / "nothing", *tiny_model(tiny_weights), "-o", tmp_path / "o"])
    assert result.exit_code == 1
    (line,) = error_lines(result.stderr)
    assert "nothing" in line and "no input files" in line


# -------------------------------------------------------------------------------- set-up errors
class CreatesAFile:
    """Unpickling this would create ``path``: a checkpoint that runs code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def broken_setups(tmp_path: Path, weights: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (options, expected text of the one error line)."""
    (tmp_path / "syntax.yaml").write_text("rules:\n  - match: {type: Conv\n    rule: zplus\n")
    (tmp_path / "unknown-rule.yaml").write_text("rules:\n  - match: {type: Conv}\n    rule: zpls\n")
    (tmp_path / "wrong-type.yaml").write_text(
        "rules:\n  - match: {type: Conv}\n    rule: gamma\n    gamma: lots\n"
    )
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "other.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    torch.save({"fc.weight": CreatesAFile(tmp_path / "pwned")}, tmp_path / "evil.pt")
    tiny = tiny_model(weights)
    return {
        "yaml syntax": ([*tiny, "-c", str(tmp_path / "syntax.yaml")], "syntax.yaml:"),
        "unknown rule": ([*tiny, "-c", str(tmp_path / "unknown-rule.yaml")], "did you mean"),
        "wrong type": (
            [*tiny, "-c", str(tmp_path / "wrong-type.yaml")],
            "wrong-type.yaml:4: gamma of rule gamma must be a number",
        ),
        "unknown preset": ([*tiny, "-c", "epsilon-pluss"], "did you mean epsilon-plus"),
        "unknown model": (["-m", "resnet19"], "did you mean resnet18"),
        "wrong architecture": (
            ["-m", "resnet34", "-w", str(tmp_path / "other.pt"), "--num-classes", "3"],
            "do not fit",
        ),
        "corrupt weights": (["-m", "resnet18", "-w", str(tmp_path / "corrupt.pt")], "corrupt.pt"),
        "code in checkpoint": (["-m", "resnet18", "-w", str(tmp_path / "evil.pt")], "refusing"),
        "output folder": ([*tiny, "-o", str(tmp_path / "syntax.yaml" / "out")], "output folder"),
    }


def test_setup_errors_exit_2_with_one_line_and_run_nothing(tmp_path, tiny_weights):
    image = write_npy(tmp_path / "x.npy")
    for name, (options, expected) in broken_setups(tmp_path, tiny_weights).items():
        args = ["explain", image, "-o", tmp_path / "out", *options]
        result = run(args)
        assert result.exit_code == 2, (name, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, lines)
        assert expected in lines[0], (name, lines[0])
    assert not (tmp_path / "pwned").exists()  # the pickle was refused, not run
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# -------------------------------------------------------------------------------- outputs
def test_paths_from_stdin_never_escape_the_output_folder(tmp_path, tiny_weights, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    write_npy(tmp_path / "elsewhere" / "x.npy")
    write_npy(tmp_path / "abs.npy", seed=1)
    monkeypatch.chdir(work)
    before = sorted(tmp_path.rglob("*"))
    result = run(
        ["explain", "-", *tiny_model(tiny_weights), "-o", "out"],
        input=f"../elsewhere/x.npy\n{tmp_path / 'abs.npy'}\n",
    )
    assert result.exit_code == 0, result.stderr
    created = sorted(set(tmp_path.rglob("*")) - set(before))
    assert all(work / "out" in p.parents or p == work / "out" for p in created), created
    assert (work / "out" / "x.png").exists() and (work / "out" / "abs.png").exists()


def test_symlink_inside_the_output_folder_is_not_followed_out(tmp_path, tiny_weights):
    write_npy(tmp_path / "in" / "sub" / "x.npy")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").symlink_to(outside)
    result = run(["explain", tmp_path / "in", *tiny_model(tiny_weights), "-o", tmp_path / "out"])
    assert result.exit_code == 1
    (line,) = error_lines(result.stderr)
    assert "outside" in line
    assert not any(outside.iterdir())


def test_two_inputs_never_share_an_output(tmp_path, tiny_weights):
    """x.npy holding 2 samples would write x.0.png: x.0.jpg (first in order) already does."""
    write_npy(tmp_path / "in" / "x.npy", samples=2)
    write_image(tmp_path / "in" / "x.0.jpg")
    result = run(["explain", tmp_path / "in", *tiny_model(tiny_weights), "-o", tmp_path / "out"])
    assert result.exit_code == 1
    (line,) = error_lines(result.stderr)
    assert "x.npy:" in line and "x.0.png is also the output of another input" in line
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.0.npy", "x.0.png"]


# -------------------------------------------------------------------------------- kill, Ctrl-C
# The run under test holds on one input: a sitecustomize module (loaded by every process of the
# run, decoding workers included) makes the decoding of HOLD wait until the test removes a file.
# So the test knows exactly which inputs are done when it kills or interrupts, instead of racing
# the run with sleeps.
HOLD = "x02"
HOOK = """
import os, pathlib, time
import lrp_cli.images as images

_decode = images.decode_input

def decode_input(item, *args, **kwargs):
    folder = pathlib.Path(os.environ["LRP_TEST_HOLD_DIR"])
    if item.path.stem == os.environ["LRP_TEST_HOLD"]:
        (folder / "holding").touch()
        while (folder / "hold").exists():
            time.sleep(0.01)
    return _decode(item, *args, **kwargs)

images.decode_input = decode_input
"""


def start_batch(tmp_path: Path, weights: Path, count: int) -> tuple[list[str], Path, dict]:
    """The command of a run over ``count`` inputs, its output folder, and its environment."""
    for i in range(count):
        write_npy(tmp_path / "in" / f"x{i:02d}.npy", seed=i)
    out = tmp_path / "out"
    options = [*tiny_model(weights), *"--batch-size 1 --workers 1 --device cpu".split()]
    command = lrp_command("explain", tmp_path / "in", "-o", out, *options)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    (hook / "hold").touch()
    path = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "LRP_TEST_HOLD": HOLD, "LRP_TEST_HOLD_DIR": str(hook)}
    return command, out, env


def complete(out: Path) -> set[str]:
    """Stems whose heatmap and relevance both exist."""
    if not out.exists():
        return set()
    return {p.stem for p in out.glob("*.png")} & {p.stem for p in out.glob("*.npy")}


def wait_until_held(process: subprocess.Popen, out: Path, env: dict, timeout: float = 120):
    """Until the run holds on HOLD with every input before it written (x00 and x01)."""
    holding = Path(env["LRP_TEST_HOLD_DIR"]) / "holding"
    deadline = time.monotonic() + timeout
    while not (holding.exists() and complete(out) == {"x00", "x01"}):
        assert process.poll() is None, "the run ended before it could be stopped"
        assert time.monotonic() < deadline, f"not held in {timeout} s: {sorted(complete(out))}"
        time.sleep(0.02)


def check_valid(out: Path, count: int) -> None:
    for i in range(count):
        relevance = np.load(out / f"x{i:02d}.npy", allow_pickle=False)
        assert relevance.shape == (SIZE, SIZE) and relevance.dtype == np.float32
        with Image.open(out / f"x{i:02d}.png") as heatmap:
            heatmap.load()
            assert heatmap.size == (SIZE, SIZE)


def test_killed_run_resumes_with_skip_existing(tmp_path, tiny_weights):
    count = 6
    command, out, env = start_batch(tmp_path, tiny_weights, count)
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    try:
        wait_until_held(process, out, env)
    finally:
        process.kill()  # SIGKILL: no clean-up at all
        process.wait()
    assert complete(out) == {"x00", "x01"}
    mtimes = {p: p.stat().st_mtime_ns for p in out.iterdir()}

    (Path(env["LRP_TEST_HOLD_DIR"]) / "hold").unlink()
    resumed = subprocess.run([*command, "--skip-existing"], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "2 skipped" in resumed.stderr
    check_valid(out, count)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # not recomputed
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"x{i:02d}.{ext}" for i in range(count) for ext in ("png", "npy")
    )  # every output there, no temporary file left


@pytest.fixture
def sigint_as_in_a_terminal():
    """Children start with Ctrl-C's default action, as from an interactive shell. A pytest run
    started in the background of a non-interactive shell (``make test &``, some CI runners)
    ignores SIGINT, and an ignored signal stays ignored across exec: the child would never
    see the Ctrl-C, rightly (as under ``nohup``). A handler, unlike SIG_IGN, resets on exec."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_cleanly_with_130(tmp_path, tiny_weights, sigint_as_in_a_terminal):
    command, out, env = start_batch(tmp_path, tiny_weights, 6)
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        wait_until_held(process, out, env)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert stdout == "" and "Traceback" not in stderr
    assert "interrupted" in stderr and "--skip-existing" in stderr
    # finished inputs are whole; the others left nothing behind, not even temporary files
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}.{ext}" for stem in ("x00", "x01") for ext in ("png", "npy")
    )


# -------------------------------------------------------------------------------- gaps
def test_a_batch_the_engine_fails_on_fails_its_inputs_only(tmp_path, tiny_weights, monkeypatch):
    from lrp_cli.engine import Explainer

    inputs = [write_npy(tmp_path / f"in/x{i}.npy", seed=i) for i in range(3)]
    original, calls = Explainer.__call__, []

    def fail_second_batch(self, x, *args, **kwargs):
        calls.append(len(x))
        if len(calls) == 2:
            raise RuntimeError("boom\nwith a second line")
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(Explainer, "__call__", fail_second_batch)
    out = tmp_path / "out"
    options = [*tiny_model(tiny_weights), "--batch-size", "1", "--jsonl", "-", "--device", "cpu"]
    result = run(["explain", *inputs, "-o", out, *options])
    assert result.exit_code == 1 and calls == [1, 1, 1]
    by_name = {Path(r["input"]).name: r for r in records(result.stdout)}
    assert by_name["x1.npy"]["status"] == "failed"
    assert by_name["x1.npy"]["error"].endswith("explaining failed: boom with a second line")
    assert [by_name[f"x{i}.npy"]["status"] for i in (0, 2)] == ["explained", "explained"]
    (line,) = error_lines(result.stderr)
    assert "x1.npy" in line and "boom" in line and "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["x0.npy", "x0.png", "x2.npy", "x2.png"]
    # --debug (or LRP_DEBUG=1) adds the traceback that the one line stands for
    monkeypatch.delenv("LRP_DEBUG", raising=False)  # restored after the test: --debug sets it
    for debug, env in ((["--debug"], None), ([], {"LRP_DEBUG": "1"})):
        calls.clear()
        again = run([*debug, "explain", *inputs, "-o", out, *options, "--overwrite"], env=env)
        assert again.exit_code == 1
        assert "Traceback (most recent call last)" in again.stderr
        assert "RuntimeError: boom" in again.stderr and "in fail_second_batch" in again.stderr


def test_stale_temporary_files_of_dead_runs_are_removed(tmp_path, tiny_weights):
    """A SIGKILLed run leaves ``.NAME.HOST.PID-HEX.tmp`` files; the next run removes those of
    this host whose process is gone, and keeps a live process's, another host's (a node of a
    cluster writing into the same folder) and anything that only looks similar."""
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is no longer a process (reused only after the pid space wraps)
    host = temporary_path(Path("x")).name.split(".")[2]
    assert temporary_writer(f".x.png.{host}.{dead.pid}-0123abcd.tmp") == dead.pid
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    stale = [
        out / f".x.png.{host}.{dead.pid}-0123abcd.tmp",
        out / "sub" / f".y.v2.npy.{host}.{dead.pid}-ffff0000.tmp",
    ]
    kept = [
        out / f".z.png.{host}.{os.getpid()}-0123abcd.tmp",
        out / f".z.png.other-node.{dead.pid}-0123abcd.tmp",
        out / "notes.tmp",
        out / f".a.{host}.1-xyz.tmp",
    ]
    for path in stale + kept:
        path.write_bytes(b"partial")
    result = run(["explain", write_npy(tmp_path / "x.npy"), *tiny_model(tiny_weights), "-o", out])
    assert result.exit_code == 0, result.stderr
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)


@pytest.mark.parametrize("planned, actual", [(2, 3), (3, 2), (2, None), (None, 2)])
def test_a_npy_that_changes_after_planning_is_explained_as_it_is(
    tmp_path, tiny_weights, monkeypatch, planned, actual
):
    """The output names are planned from the .npy header; if the file is rewritten before it
    is decoded (another process, a sync tool), the outputs follow what was actually read."""
    from lrp_cli.pipeline import plan

    path = write_npy(tmp_path / "x.npy", samples=planned)
    original = plan._npy_samples

    def rewrite_after_planning(npy):
        samples = original(npy)
        write_npy(npy, samples=actual, seed=1)
        return samples

    monkeypatch.setattr(plan, "_npy_samples", rewrite_after_planning)
    out = tmp_path / "out"
    result = run(["explain", path, *tiny_model(tiny_weights), "-o", out, "--jsonl", "-"])
    assert result.exit_code == 0, result.stderr
    # One sample read where several were planned keeps the numbered name x.0 (the decoder
    # hands on (1, C, H, W) either way); the names never clash with another input's.
    stems = ["x.0"] if actual is None else [f"x.{k}" for k in range(actual)]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s}.{e}" for s in stems for e in "png npy".split()
    )
    assert [r["status"] for r in records(result.stdout)] == ["explained"] * len(stems)
    assert [Path(r["outputs"]["heatmap"]).stem for r in records(result.stdout)] == stems


# -------------------------------------------------------------------------------- every refusal
def test_inputs_refused_while_collecting_get_failed_records(tmp_path, tiny_weights):
    """A path that does not exist, a folder without images, a pattern matching nothing and a
    dangling symbolic link each get a failed record naming the input as given."""
    good = write_npy(tmp_path / "good.npy")
    (tmp_path / "empty").mkdir()
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "stdin-dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    specs = {
        str(tmp_path / "missing.jpg"): "no such file or folder",
        str(tmp_path / "empty"): "no input files",
        str(tmp_path / "nothing-*.png"): "the pattern matched no input files",
        str(tmp_path / "dangling.png"): "broken symbolic link",
        "-": "broken symbolic link",  # a dangling link read from stdin
    }
    result = run(
        [
            "explain",
            good,
            *specs,
            *tiny_model(tiny_weights),
            "-o",
            tmp_path / "out",
            "--jsonl",
            "-",
        ],
        input=f"{tmp_path / 'stdin-dangling.jpg'}\n",
    )
    assert result.exit_code == 1, result.stderr
    found = records(result.stdout)
    assert [r["status"] for r in found].count("explained") == 1
    failed = {r["input"]: r for r in found if r["status"] == "failed"}
    assert set(failed) == {*specs, str(tmp_path / "stdin-dangling.jpg")} - {"-"}
    for spec, reason in specs.items():
        record = failed[str(tmp_path / "stdin-dangling.jpg") if spec == "-" else spec]
        assert reason in record["error"] and "\n" not in record["error"]
        assert record["outputs"] is None and record["model"] == "resnet18"
        assert set(record) == set(found[-1])  # the same keys as every other record
    errors = error_lines(result.stderr)
    assert len(errors) == len(failed)  # each refusal once on stderr, none twice
    assert "(1 heatmaps, 5 failed)" in result.stderr


def test_refused_inputs_are_still_reported_when_the_setup_fails(tmp_path, tiny_weights):
    missing = tmp_path / "missing.jpg"
    result = run(["explain", missing, *tiny_model(tiny_weights), "-c", "no-such-preset"])
    assert result.exit_code == 2
    first, second = error_lines(result.stderr)
    assert str(missing) in first and "no such file" in first
    assert "no-such-preset" in second


def test_an_input_whose_outputs_cannot_be_rendered_fails_alone(tmp_path, tiny_weights, monkeypatch):
    """Writing refuses one input (a rendering error, not an OS error): a failed record for it,
    the run goes on."""
    from lrp_cli.pipeline import batch

    inputs = [write_npy(tmp_path / f"x{i}.npy", seed=i) for i in range(3)]
    original, calls = batch.render_heatmap, []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("cannot draw this")
        return original(*args, **kwargs)

    monkeypatch.setattr(batch, "render_heatmap", fail_second)
    out = tmp_path / "out"
    result = run(["explain", *inputs, *tiny_model(tiny_weights), "-o", out, "--jsonl", "-"])
    assert result.exit_code == 1, result.stderr
    statuses = [r["status"] for r in records(result.stdout)]
    assert statuses == ["explained", "failed", "explained"]
    failed = records(result.stdout)[1]
    assert failed["error"].endswith("writing its outputs failed: cannot draw this")
    assert failed["probability"] is not None  # what was known before writing is kept
    assert sorted(p.name for p in out.iterdir()) == ["x0.npy", "x0.png", "x2.npy", "x2.png"]
