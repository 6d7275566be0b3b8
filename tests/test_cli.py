"""End-to-end tests of the ``lrp`` command: CliRunner in-process, and real subprocesses.

Most tests use a random resnet18 (10 classes, 64 x 64 inputs) so that they are fast; the
built-in model runs on two of the sample photos.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image

from lrp_cli import __version__
from lrp_cli.cli import main

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_images"
SIZE = 64


# -------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A random resnet18 state dict with 10 classes, saved as a plain .pt file."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18-10.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    return path


def tiny_model(weights: Path) -> list[str]:
    """The options that select the small random model."""
    return ["-m", "resnet18", "-w", str(weights), "--num-classes", "10", "--input-size", str(SIZE)]


def write_npy(path: Path, samples: int | None = None, seed: int = 0, size: int = SIZE) -> Path:
    """A preprocessed input: (3, size, size), or (samples, 3, size, size)."""
    shape = (3, size, size) if samples is None else (samples, 3, size, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.random.default_rng(seed).standard_normal(shape).astype(np.float32))
    return path


def write_image(path: Path, size=(80, 60), seed: int = 0, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **save)
    return path


def run(args: list[str], input: str | None = None, env: dict | None = None):
    """Invoke ``lrp`` in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(main, [str(a) for a in args], input=input, env=env)


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def check_outputs(record: dict, size: int) -> np.ndarray:
    """The record's files exist with the right shapes and dtypes; returns the relevance."""
    assert record["status"] == "explained" and record["error"] is None
    relevance = np.load(record["outputs"]["relevance"], allow_pickle=False)
    assert relevance.dtype == np.float32 and relevance.shape == (size, size)
    with Image.open(record["outputs"]["heatmap"]) as heatmap:
        assert heatmap.format == "PNG" and heatmap.mode == "RGB"
        assert heatmap.size == (size, size)
    assert record["relevance_sum"] == pytest.approx(float(relevance.sum(dtype=np.float64)))
    assert np.isfinite(record["logit"]) and 0.0 <= record["probability"] <= 1.0
    assert record["vmax"] > 0
    return relevance


# -------------------------------------------------------------------------------- help, version
def test_help_does_not_import_torch_or_rich():
    """``lrp --help`` and every command's help answer without torch, in well under a second."""
    code = (
        "import sys\n"
        "from lrp_cli.cli import main\n"
        "for args in (['--help'], ['explain', '--help'], ['evaluate', '--help'],"
        " ['inspect', '--help'], ['presets', '--help'], ['--version']):\n"
        "    try:\n"
        "        main(args, prog_name='lrp')\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (args, e.code)\n"
        "print('torch' in sys.modules, 'rich' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "False False"
    # The real entry point too: -X importtime lists every module the interpreter imported.
    help_run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "lrp_cli", "--help"],
        capture_output=True,
        text=True,
    )
    assert help_run.returncode == 0 and "Examples:" in help_run.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in help_run.stderr.splitlines()}
    assert "lrp_cli.cli" in imported and "click" in imported
    assert not {"torch", "torchvision", "rich"} & imported


@pytest.mark.parametrize("command", ["explain", "evaluate", "inspect", "presets"])
def test_every_help_teaches_by_example(command):
    result = run([command, "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.stdout and f"lrp {command}" in result.stdout
    if command != "presets":
        assert f"LRP_{command.upper()}_MODEL" in result.stdout  # environment defaults shown


def test_version():
    result = run(["--version"])
    assert result.exit_code == 0 and __version__ in result.stdout


# -------------------------------------------------------------------------------- explain
def test_builtin_model_on_sample_photos(tmp_path):
    """The default model and config, offline: the cat is a cat, the coffee is espresso/a cup."""
    out = tmp_path / "out"
    result = run(["explain", SAMPLES, "-o", out, "--overlay", "--jsonl", "-"])
    assert result.exit_code == 0, result.stderr
    photos = sorted(SAMPLES.glob("*.jpg"))
    assert len(photos) >= 5
    summary = f"explained {len(photos)} inputs -> {out}{os.sep} ({len(photos)} heatmaps, 0 failed)"
    assert summary in result.stderr
    found = {Path(r["input"]).name: r for r in records(result.stdout)}
    assert sorted(found) == [p.name for p in photos]
    for record in found.values():
        check_outputs(record, 224)
        # without -c: the built-in model's recommended preset (README: faithfulness)
        assert record["model"] == "efficientnet_lite0" and record["config"] == "epsilon-gamma-box"
        with Image.open(record["outputs"]["overlay"]) as picture, Image.open(record["input"]) as o:
            assert picture.mode == "RGB" and picture.size == o.size  # on the original photo
    assert "cat" in found["chelsea-cat.jpg"]["class_name"].lower()
    assert found["coffee-cup.jpg"]["class_name"] in ("espresso", "cup", "coffee mug")
    assert Path(found["chelsea-cat.jpg"]["outputs"]["heatmap"]) == out / "chelsea-cat.png"


def test_npy_inputs_one_output_per_sample(tmp_path, tiny_weights):
    single = write_npy(tmp_path / "in" / "single.npy")
    several = write_npy(tmp_path / "in" / "several.npy", samples=3, seed=1)
    out = tmp_path / "out"
    options = [
        *tiny_model(tiny_weights),
        *"-t 3 --batch-size 2 --jsonl".split(),
        tmp_path / "r.jsonl",
    ]
    result = run(["explain", single, several, "-o", out, *options])
    assert result.exit_code == 0, result.stderr
    found = records((tmp_path / "r.jsonl").read_text())
    assert [(Path(r["input"]).name, r["sample"]) for r in found] == [
        ("single.npy", None),
        ("several.npy", 0),
        ("several.npy", 1),
        ("several.npy", 2),
    ]
    for record in found:
        check_outputs(record, SIZE)
        assert record["target"] == 3 and record["class_name"] is None
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["single.png", "single.npy"]
        + [f"several.{k}.{e}" for k in range(3) for e in ("png", "npy")]
    )
    assert "(4 heatmaps, 0 failed)" in result.stderr


def test_npy_explained_as_is_matches_the_engine(tmp_path, tiny_weights):
    """No resizing or renormalising of .npy inputs: the saved map is the engine's own."""
    from lrp_cli.config import load_config
    from lrp_cli.models import load_model
    from lrp_cli.pipeline.prepare import build_explainer

    path = write_npy(tmp_path / "x.npy")
    result = run(["explain", path, *tiny_model(tiny_weights), "-o", tmp_path / "out"])
    assert result.exit_code == 0, result.stderr
    loaded = load_model("resnet18", tiny_weights, num_classes=10, input_size=SIZE)
    explainer, _ = build_explainer(loaded, load_config("epsilon-plus-flat"))
    expected = explainer(torch.from_numpy(np.load(path))[None]).relevance.sum(dim=1)[0]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "x.npy"), expected.numpy())


def test_folders_keep_sub_folders_and_stdin_lists(tmp_path, tiny_weights, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_npy(tmp_path / "data" / "a" / "x.npy")
    write_npy(tmp_path / "data" / "b" / "x.npy", seed=1)
    write_image(tmp_path / "data" / "b" / "photo.jpg")
    result = run(["explain", "data", *tiny_model(tiny_weights), "-o", "out"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "out/a/x.png").exists() and (tmp_path / "out/b/x.png").exists()
    assert (tmp_path / "out/b/photo.npy").exists()
    # stdin: one path per line, and NUL-separated with -0
    listed = run(
        ["explain", "-", *tiny_model(tiny_weights), "-o", "out2", "--jsonl", "-"],
        input="data/a/x.npy\ndata/b/photo.jpg\n",
    )
    assert listed.exit_code == 0, listed.stderr
    assert [r["input"] for r in records(listed.stdout)] == ["data/a/x.npy", "data/b/photo.jpg"]
    assert (tmp_path / "out2/data/a/x.npy").exists()
    nul = run(
        ["explain", "-", "-0", *tiny_model(tiny_weights), "-o", "out3"],
        input="data/b/x.npy\0data/a/x.npy\0",
    )
    assert nul.exit_code == 0, nul.stderr
    assert (tmp_path / "out3/data/b/x.png").exists() and (tmp_path / "out3/data/a/x.png").exists()


def test_exit_status_1_when_some_inputs_fail(tmp_path, tiny_weights):
    good = write_npy(tmp_path / "good.npy")
    empty = tmp_path / "empty.jpg"
    empty.touch()
    out = tmp_path / "out"
    inputs = [good, empty, tmp_path / "missing.png"]
    result = run(["explain", *inputs, *tiny_model(tiny_weights), "-o", out, "--jsonl", "-"])
    assert result.exit_code == 1
    errors = error_lines(result.stderr)
    assert len(errors) == 2
    assert any("empty.jpg" in e and "empty" in e for e in errors)
    assert any("missing.png" in e and "no such file" in e for e in errors)
    # the missing path was refused while collecting: its record comes first
    missing_record, good_record, bad_record = records(result.stdout)
    assert missing_record["status"] == "failed" and "no such file" in missing_record["error"]
    assert missing_record["input"] == str(tmp_path / "missing.png")
    check_outputs(good_record, SIZE)
    assert bad_record["status"] == "failed" and "empty" in bad_record["error"]
    assert "(1 heatmaps, 2 failed)" in result.stderr


def test_existing_outputs_never_overwritten_silently(tmp_path, tiny_weights):
    inputs = [write_npy(tmp_path / f"in/x{i}.npy", seed=i) for i in range(2)]
    out = tmp_path / "out"
    args = ["explain", *inputs, *tiny_model(tiny_weights), "-o", out]
    assert run(args).exit_code == 0
    mtimes = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run(args)
    assert again.exit_code == 1
    assert len(error_lines(again.stderr)) == 2 and "--overwrite" in again.stderr
    (out / "x1.png").unlink()  # x1 is incomplete now
    resumed = run([*args, "--skip-existing"])
    assert resumed.exit_code == 0, resumed.stderr
    assert "1 skipped" in resumed.stderr
    assert (out / "x0.npy").stat().st_mtime_ns == mtimes[out / "x0.npy"]
    assert (out / "x1.npy").stat().st_mtime_ns != mtimes[out / "x1.npy"]
    assert (out / "x1.png").exists()
    replaced = run([*args, "--overwrite"])
    assert replaced.exit_code == 0
    assert (out / "x0.npy").stat().st_mtime_ns != mtimes[out / "x0.npy"]
    both = run([*args, "--overwrite", "--skip-existing"])
    assert both.exit_code == 2 and "exclude each other" in both.stderr


def test_options_from_the_environment(tmp_path, tiny_weights):
    path = write_npy(tmp_path / "x.npy")
    env = {
        "LRP_EXPLAIN_OUT": str(tmp_path / "env-out"),
        "LRP_EXPLAIN_CMAP": "seismic",
        "LRP_EXPLAIN_VMAX": "0.5",
    }
    result = run(["explain", path, *tiny_model(tiny_weights), "--jsonl", "-"], env=env)
    assert result.exit_code == 0, result.stderr
    (record,) = records(result.stdout)
    assert record["cmap"] == "seismic" and record["vmax"] == 0.5
    assert (tmp_path / "env-out" / "x.png").exists()


def test_target_by_class_name(tmp_path, tiny_weights, monkeypatch):
    """-t NAME explains that class: the same relevance as its index, not the top class."""
    path = write_npy(tmp_path / "x.npy", size=16)
    (tmp_path / "namednet.py").write_text(
        "import torch\n"
        "def net():\n"
        "    torch.manual_seed(0)\n"
        "    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3))\n"
        "    model.categories = ['cat', 'tabby dog', 'fox']\n"
        "    return model\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = ["-m", "namednet:net", "--input-size", "16", "-c", "zero"]
    relevance = {}
    for target in ("top1", "fox", "Tabby_Dog", "1"):
        out = tmp_path / target
        result = run(["explain", path, *model, "-t", target, "-o", out, "--jsonl", "-"])
        assert result.exit_code == 0, result.stderr
        (record,) = records(result.stdout)
        relevance[target] = (record["target"], record["class_name"], np.load(out / "x.npy"))
    assert relevance["fox"][:2] == (2, "fox") and relevance["Tabby_Dog"][:2] == (1, "tabby dog")
    np.testing.assert_array_equal(relevance["Tabby_Dog"][2], relevance["1"][2])
    # LRP-0 on a linear layer is exact: R = w_c * x (summed over channels in the .npy).
    import namednet

    weight = namednet.net()[1].weight.detach().double().numpy().reshape(3, 3, 16, 16)
    x = np.load(path).astype(np.float64)
    for name, c in (("fox", 2), ("Tabby_Dog", 1)):
        np.testing.assert_allclose(relevance[name][2], (weight[c] * x).sum(0), atol=1e-5)
    result = run(["explain", path, *tiny_model(tiny_weights), "-o", tmp_path, "-t", "tabby"])
    assert result.exit_code == 2 and "class names" in result.stderr  # 10 classes, no names


def test_ctrl_c_keeps_finished_outputs_and_exits_130(tmp_path, tiny_weights, monkeypatch):
    from lrp_cli.pipeline.batch import BatchWork

    inputs = [write_npy(tmp_path / f"in/x{i}.npy", seed=i) for i in range(3)]
    original = BatchWork.explain
    calls = []

    def interrupt_second_batch(self, batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(BatchWork, "explain", interrupt_second_batch)
    out = tmp_path / "out"
    result = run(["explain", *inputs, *tiny_model(tiny_weights), "-o", out, "--batch-size", "1"])
    assert result.exit_code == 130
    assert "interrupted" in result.stderr and "--skip-existing" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["x0.npy", "x0.png"]


def test_degenerate_and_nan_results_are_per_input_errors(tmp_path, monkeypatch):
    """A map that is zero everywhere, or NaN logits: an error line, and no PNG."""
    (tmp_path / "oddnets.py").write_text(
        "import torch\n"
        "def zero():\n"
        "    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))\n"
        "    torch.nn.init.zeros_(m[1].weight)\n"
        "    return m\n"
        "def nan():\n"
        "    m = zero()\n"
        "    torch.nn.init.constant_(m[1].weight, float('nan'))\n"
        "    return m\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    np.save(tmp_path / "x.npy", np.ones((3, 8, 8), np.float32))
    for name, problem in (("zero", "zero everywhere"), ("nan", "NaN or infinite")):
        out = tmp_path / name
        result = run(
            [
                "explain",
                tmp_path / "x.npy",
                "-m",
                f"oddnets:{name}",
                "-o",
                out,
                "--input-size",
                "8",
                "-c",
                "epsilon",
            ]
        )
        assert result.exit_code == 1, result.stderr
        (line,) = error_lines(result.stderr)
        assert "x.npy" in line and problem in line
        assert not list(out.iterdir())


def test_usage_errors_exit_2_with_one_line(tmp_path, tiny_weights):
    path = write_npy(tmp_path / "x.npy")
    for args, expected in (
        (["-c", "epsilon-plus-flt"], "did you mean epsilon-plus-flat"),
        (["-m", "resnet1"], "did you mean resnet18"),
        (["--mean", "1,2"], "'1,2' needs 3 numbers (one per RGB channel)"),
        (["--device", "cuda"], "PyTorch sees no CUDA GPU here; use --device cpu or auto"),
    ):
        if "cuda" in args and torch.cuda.is_available():
            continue
        model = [] if "-m" in args else tiny_model(tiny_weights)
        result = run(["explain", path, *model, *args, "-o", tmp_path / "out"])
        assert result.exit_code == 2, result.stderr
        assert expected in result.stderr
        if "--mean" not in args:  # click's own usage errors add a usage line and a hint
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# -------------------------------------------------------------------------------- subprocess
def lrp_command(*args) -> list[str]:
    """The command line of a real ``python -m lrp_cli ARGS`` process."""
    return [sys.executable, "-m", "lrp_cli", *map(str, args)]


def lrp(*args, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m lrp_cli`` for real."""
    return subprocess.run(lrp_command(*args), capture_output=True, text=True, **kwargs)


def test_real_process_stdout_carries_only_records(tmp_path, tiny_weights):
    for i in range(3):
        write_npy(tmp_path / "in" / f"x{i}.npy", seed=i)
    result = lrp(
        "explain",
        tmp_path / "in",
        *tiny_model(tiny_weights),
        "-o",
        tmp_path / "out",
        "--jsonl",
        "-",
        "--workers",
        "1",
    )
    assert result.returncode == 0, result.stderr
    found = records(result.stdout)  # every stdout line is JSON
    assert len(found) == 3
    for record in found:
        check_outputs(record, SIZE)
    assert result.stderr.strip().splitlines()[-1].startswith("explained 3 inputs ->")
    assert "\x1b[" not in result.stderr  # no colour codes or progress bar when not a terminal


def test_closed_stdout_pipe_ends_quietly(tmp_path, tiny_weights):
    for i in range(4):
        write_npy(tmp_path / "in" / f"x{i}.npy", seed=i)
    folders = [tmp_path / "in", "-o", tmp_path / "out"]
    options = [*tiny_model(tiny_weights), *"--jsonl - --batch-size 1".split()]
    command = lrp_command("explain", *folders, *options)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        first = process.stdout.readline()
        process.stdout.close()  # like `| head -1`
        stderr = process.stderr.read().decode()
        process.wait(timeout=120)
    assert json.loads(first)["status"] == "explained"
    assert process.returncode == 141
    assert "Traceback" not in stderr and "Error" not in stderr


# -------------------------------------------------------------------------------- other commands
def test_presets_lists_shipped_configs():
    result = run(["presets"])
    assert result.exit_code == 0
    assert any(line.startswith("epsilon-plus-flat ") for line in result.stdout.splitlines())


def test_inspect_shows_every_layer_and_unmatched_patterns(tmp_path, tiny_weights):
    config = tmp_path / "rules.yaml"
    config.write_text(
        "rules:\n"
        "  - match: {type: Conv}\n    rule: zplus\n"
        "  - match: {name: 'does.not.exist'}\n    rule: flat\n"
    )
    result = run(["inspect", *tiny_model(tiny_weights), "-c", config])
    assert result.exit_code == 0, result.stderr
    assert "conv1" in result.stdout and "fc" in result.stdout and "zplus" in result.stdout
    assert "bn1" in result.stdout  # folded BatchNorm shown
    assert "unmatched" in result.stdout and "does.not.exist" in result.stdout
    assert f"{config}:4" in result.stdout


def test_explain_warns_once_about_unmatched_patterns(tmp_path, tiny_weights):
    config = tmp_path / "rules.yaml"
    config.write_text("rules:\n  - match: {name: 'nothing.here'}\n    rule: flat\n")
    options = [*tiny_model(tiny_weights), "-c", config, "-o", tmp_path / "out"]
    result = run(["explain", write_npy(tmp_path / "x.npy"), *options])
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "nothing.here" in warnings[0]


def test_evaluate_table_json_and_plot(tmp_path, tiny_weights):
    inputs = [write_npy(tmp_path / f"x{i}.npy", seed=i) for i in range(2)]
    tiny = [*tiny_model(tiny_weights), *"--region 16 --steps 8".split()]
    methods = "-c epsilon-plus-flat -c epsilon --baseline random,gradient --order morf,random"
    outputs = ["--json", tmp_path / "e.json", "--plot", tmp_path / "e.png"]
    result = run(["evaluate", *inputs, *tiny, *methods.split(), *outputs])
    assert result.exit_code == 0, result.stderr
    assert "AOPC" in result.stdout and "epsilon-plus-flat" in result.stdout
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["steps"] == 8
    methods = {(r["method"], r["order"]) for r in data["results"]}
    assert methods == {
        (m, o)
        for m in ("epsilon-plus-flat", "epsilon", "random", "gradient")
        for o in ("morf", "random")
    }
    for entry in data["results"]:
        assert len(entry["curve"]) == 9 and len(entry["per_image"]) == 2
    with Image.open(tmp_path / "e.png") as plot:
        assert plot.format == "PNG"
    # without -c: a model with no recommended preset gets epsilon-plus-flat
    again = run(
        ["evaluate", *inputs, *tiny, "--baseline", "none", "--order", "morf,random", "--json"]
        + [tmp_path / "f.json"]
    )
    assert again.exit_code == 0, again.stderr
    first = json.loads((tmp_path / "f.json").read_text())["results"][0]
    assert first == next(
        r for r in data["results"] if r["method"] == "epsilon-plus-flat" and r["order"] == "morf"
    )


def test_evaluate_ranks_exact_relevance_of_a_linear_model(tmp_path, monkeypatch):
    """On a linear model LRP-0 is exact: most-relevant-first beats random, which beats lerf."""
    (tmp_path / "linnet.py").write_text(
        "import torch\n"
        "def net():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    inputs = [write_npy(tmp_path / f"x{i}.npy", seed=i, size=16) for i in range(3)]
    options = "-m linnet:net --input-size 16 -c zero --region 4 --steps 16 --perturbation constant"
    orders = "--order morf,lerf --json".split()
    result = run(["evaluate", *inputs, *options.split(), *orders, tmp_path / "e.json"])
    assert result.exit_code == 0, result.stderr
    aopc = {
        (r["method"], r["order"]): r["aopc"]
        for r in json.loads((tmp_path / "e.json").read_text())["results"]
    }
    assert aopc["zero", "morf"] > aopc["random", "morf"] > aopc["zero", "lerf"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "17"], "16 regions"),
        (["--order", "sideways"], "choose from morf, lerf, random"),
        (["--baseline", "magic"], "choose from random, gradient, gradient-x-input"),
        (["-c", "nope"], "unknown preset"),
    ],
)
def test_evaluate_bad_arguments_exit_2(tmp_path, tiny_weights, args, message):
    path = write_npy(tmp_path / "x.npy")
    result = run(["evaluate", path, *tiny_model(tiny_weights), "--region", "16", *args])
    assert result.exit_code == 2
    assert message in result.stderr


def test_compare_command_draws_the_columns_explain_would(tmp_path, tiny_weights):
    """Each column of `lrp compare` is the heatmap `lrp explain` writes with that config; a
    config that cannot be used is an n/a column and exit status 1, the rest still drawn."""
    from lrp_cli.analysis.compare import MIN_TILE, PAD, header

    inputs = [write_npy(tmp_path / f"x{i}.npy", seed=i) for i in range(2)]
    (tmp_path / "broken.yaml").write_text("rules: [{match: {type: Conv}, rule: nope}]\n")
    tiny, columns = tiny_model(tiny_weights), ["zero", "gradient", tmp_path / "broken.yaml"]
    options = [*tiny, "-o", tmp_path / "out", "--grid", tmp_path / "grid.png", "--device", "cpu"]
    result = run(["compare", *inputs, *[a for c in columns for a in ("-c", c)], *options])
    assert result.exit_code == 1, result.stderr
    (line,) = error_lines(result.stderr)
    assert "broken.yaml" in line and "nope" in line
    explained = run(["explain", *inputs, *tiny, "-c", "zero", "-o", tmp_path / "zero"])
    assert explained.exit_code == 0, explained.stderr

    tile = max(SIZE, MIN_TILE)
    cell = tile + 2 * PAD
    top = header(["input", "zero", "gradient", "broken"], cell).height

    def column(picture: Image.Image, c: int) -> np.ndarray:
        left = c * cell + PAD
        return np.asarray(
            picture.convert("RGB").crop((left, top + PAD, left + tile, top + PAD + tile))
        )

    for i in range(2):
        with Image.open(tmp_path / "out" / f"x{i}.compare.png") as picture:
            assert picture.size == (4 * cell, top + cell)
            zero_column, na_column = column(picture, 1), column(picture, 3)
        with Image.open(tmp_path / "zero" / f"x{i}.png") as heatmap:
            expected = np.asarray(heatmap.convert("RGB").resize((tile, tile), Image.NEAREST))
        np.testing.assert_array_equal(zero_column, expected)
        assert (na_column == na_column[..., :1]).all()  # grey with text, no heatmap colours
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (4 * cell, top + 2 * cell)


def test_precision_float64_through_the_command(tmp_path, monkeypatch):
    """--precision float64 computes in double: on a bias-free linear model LRP-0 is exact, so
    the record's relevance sum equals the logit w.x to double precision, which float32 misses."""
    (tmp_path / "linnet64.py").write_text(
        "import torch\n"
        "def net():\n"
        "    torch.manual_seed(0)\n"
        "    layer = torch.nn.Linear(3 * 16 * 16, 2, bias=False)\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), layer)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import linnet64

    path = write_npy(tmp_path / "x.npy", size=16)
    weight = linnet64.net()[1].weight.detach().double().numpy()
    logits = weight @ np.load(path).astype(np.float64).ravel()
    found = {}
    for precision in ("float64", "float32"):
        args = ["-m", "linnet64:net", "--input-size", 16, "-c", "zero", "-t", 1, "--jsonl", "-"]
        result = run(["explain", path, *args, "--precision", precision, "-o", tmp_path / precision])
        assert result.exit_code == 0, result.stderr
        (record,) = records(result.stdout)
        assert record["precision"] == precision
        found[precision] = (record["logit"], record["relevance_sum"])
    assert found["float64"][0] == pytest.approx(logits[1], rel=1e-14)
    assert found["float64"][1] == pytest.approx(logits[1], rel=1e-14)
    assert found["float32"][0] != pytest.approx(logits[1], rel=1e-12)
