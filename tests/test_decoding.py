"""Decoding ahead of the explainer (lrp_cli.pipeline.decoding) and its early start in
``lrp explain``."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path, PurePath

import numpy as np
import pytest

from lrp_cli import images
from lrp_cli.config import load_config
from lrp_cli.images import InputItem, try_decode_input
from lrp_cli.models import Preprocessing, known_preprocessing, load_model
from lrp_cli.pipeline import ExplainOptions, ExplainRun, LocalExecutor
from lrp_cli.pipeline.decoding import Decoder, decode_all

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"
PRE = Preprocessing(input_size=64, resize=72)
needs_fork = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="workers see patches by fork"
)


def _items(folder: Path) -> list[InputItem]:
    """Photos, a broken file, a 2-sample .npy and a .npy of the wrong size."""
    (folder / "broken.jpg").write_bytes(b"not an image")
    np.save(folder / "pair.npy", np.ones((2, 3, 64, 64), np.float32))
    np.save(folder / "wrong.npy", np.zeros((3, 10, 10), np.float32))
    paths = [SAMPLES / "chelsea-cat.jpg", folder / "broken.jpg", folder / "pair.npy"]
    paths += [folder / "wrong.npy", SAMPLES / "coffee-cup.jpg"]
    return [InputItem(p, PurePath(p.name)) for p in paths]


@pytest.mark.parametrize("workers", [0, 2])
def test_inputs_come_in_order_with_their_errors_and_the_same_bits(tmp_path, workers):
    items = _items(tmp_path)
    with Decoder(items, PRE, workers=workers) as decoder:
        assert decoder.workers == workers
        decoded = list(decoder)
    assert [index for index, _, _ in decoded] == list(range(len(items)))
    for index, array, error in decoded:
        expected, expected_error = try_decode_input(items[index], PRE)
        assert error == expected_error
        assert (array is None) == (expected is None)
        if array is not None:
            assert array.dtype == np.float32 and np.array_equal(array, expected)
    assert [i for i, a, _ in decoded if a is None] == [1, 3]
    assert "broken.jpg: text file" in decoded[1][2] and "does not match" in decoded[3][2]


def test_one_input_is_decoded_without_a_process():
    item = InputItem(SAMPLES / "chelsea-cat.jpg", PurePath("c.jpg"))
    with Decoder([item], PRE, workers=4) as decoder:
        assert decoder.workers == 0
        ((index, array, error),) = list(decoder)
    assert index == 0 and error is None and array.shape == (1, 3, 64, 64)


def test_lookahead_bounds_the_inputs_decoded_ahead():
    items = [InputItem(SAMPLES / "coffee-cup.jpg", PurePath(f"{i}.jpg")) for i in range(10)]
    with Decoder(items, PRE, workers=1, lookahead=3) as decoder:
        assert len(decoder._running) == 3
        seen = []
        for index, array, _ in decoder:
            seen.append(index)
            assert array is not None and len(decoder._running) <= 3
    assert seen == list(range(10))
    # A decoded 224 x 224 RGB input is 602,112 bytes of float32: 222 of them fit in 128 MiB
    # (127.5 MiB), 223 would not.
    assert Decoder(items, Preprocessing(), workers=0).lookahead == 222


@pytest.mark.parametrize("workers", [0, 1])
def test_decoding_can_be_narrowed_to_the_inputs_still_wanted(tmp_path, workers):
    items = _items(tmp_path)
    with Decoder(items, PRE, workers=workers, indices=[0, 2, 3, 4]) as decoder:
        decoder.only([2, 4])
        assert [index for index, _, _ in decoder] == [2, 4]


@needs_fork
def test_closing_terminates_a_worker_stuck_on_a_file(tmp_path, monkeypatch):
    """Ctrl-C closes the decoder: a decode that never ends must not keep it waiting."""
    started = tmp_path / "started"
    decode = images.decode_input

    def stuck(item, *args):  # runs in the forked worker
        if item.path.name == "coffee-cup.jpg":
            started.touch()
            while True:
                time.sleep(0.05)
        return decode(item, *args)

    monkeypatch.setattr(images, "decode_input", stuck)
    items = [InputItem(SAMPLES / "coffee-cup.jpg", PurePath("a.jpg"))] * 2
    decoder = Decoder(items, PRE, workers=1)
    (worker,) = decoder._pool._processes.values()
    while not started.exists():
        time.sleep(0.01)
    closing = threading.Thread(target=decoder.close)
    closing.start()
    closing.join(30)
    assert not closing.is_alive(), "close() waited for the stuck decode"
    assert not worker.is_alive()


@needs_fork
def test_a_dead_worker_fails_only_the_input_it_was_decoding(tmp_path, monkeypatch):
    shutil.copy(SAMPLES / "coffee-cup.jpg", tmp_path / "crash.jpg")
    load = images.load_image

    def load_or_die(path, *args):  # runs in the forked workers
        if Path(path).name == "crash.jpg":
            os._exit(9)
        return load(path, *args)

    monkeypatch.setattr(images, "load_image", load_or_die)
    names = ["chelsea-cat.jpg", "crash", "coffee-cup.jpg", "retina-fundus.jpg"]
    paths = [tmp_path / "crash.jpg" if n == "crash" else SAMPLES / n for n in names]
    items = [InputItem(p, PurePath(p.name)) for p in paths]
    with Decoder(items, PRE, workers=1) as decoder:
        decoded = list(decoder)
    assert [index for index, _, _ in decoded] == [0, 1, 2, 3]
    assert [array is None for _, array, _ in decoded] == [False, True, False, False]
    assert decoded[1][2].startswith(f"{paths[1]}: the process decoding it died")


def test_decode_all_gives_the_decoded_inputs_and_one_line_per_failure(tmp_path):
    items = _items(tmp_path)
    decoded, errors = decode_all(items, PRE, workers=0)
    assert [item for item, _ in decoded] == [items[0], items[2], items[4]]
    assert [rows.shape for _, rows in decoded] == [(1, 3, 64, 64), (2, 3, 64, 64), (1, 3, 64, 64)]
    assert np.array_equal(decoded[0][1], try_decode_input(items[0], PRE)[0])
    assert np.array_equal(decoded[1][1], np.ones((2, 3, 64, 64), np.float32))
    assert errors[0].startswith(f"{items[1].path}: ")
    assert errors[1].startswith(f"{items[3].path}: sample shape (3, 10, 10) does not match")


@pytest.mark.parametrize(
    "overrides", [{}, {"input_size": 160}, {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.2, 0.5)}]
)
def test_known_preprocessing_is_what_load_model_gives(overrides):
    builtin = load_model("efficientnet_lite0", **overrides).preprocessing
    assert known_preprocessing("efficientnet_lite0", **overrides) == builtin
    own = load_model("torchvision.models:resnet18", **overrides).preprocessing
    assert known_preprocessing("torchvision.models:resnet18", **overrides) == own
    assert known_preprocessing("resnet18", **overrides) is None  # from torchvision's weights


def test_known_preprocessing_leaves_bad_options_to_load_model():
    assert known_preprocessing("efficientnet_lite0", input_size=0) is None
    assert known_preprocessing("efficientnet_lite0", std=(1.0, 0.0, 1.0)) is None


def test_the_runner_uses_an_early_decoder_only_if_it_fits(tmp_path):
    """An early decoder (started before the model loaded) gives the same outputs; one that
    decodes for another input size is closed and replaced, never used."""
    items = _items(tmp_path)
    model = load_model("torchvision.models:resnet18", input_size=64)
    config = load_config("epsilon")

    def explain(out: str, decoder: Decoder | None):
        runner = ExplainRun(model, config, ExplainOptions(out=tmp_path / out, device="cpu"))
        done = []
        runner.run(items, done.extend, executor=LocalExecutor(decoder))
        return [(r["status"], r["error"] is None) for r in done]

    plain = explain("plain", None)  # the .npy pair gives two records
    ok, failed = ("explained", True), ("failed", False)
    assert plain == [ok, failed, ok, ok, failed, ok]
    pre = known_preprocessing("torchvision.models:resnet18", input_size=64)
    early = Decoder(items, pre, workers=1, lookahead=1)
    assert explain("early", early) == plain
    assert early._pool is None and not early._todo  # used to the end, then closed
    other = Decoder(items, Preprocessing(input_size=48), workers=1, lookahead=1)
    assert explain("other", other) == plain
    assert other._pool is None and len(other._todo) == 4  # closed unused
    for name in ("chelsea-cat", "pair.0", "pair.1", "coffee-cup"):
        relevance = np.load(tmp_path / "plain" / f"{name}.npy")
        assert relevance.shape == (64, 64)
        for out in ("early", "other"):
            assert np.array_equal(np.load(tmp_path / out / f"{name}.npy"), relevance)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_exit_when_their_parent_is_killed():
    """SIGKILL gives the parent no chance to stop its workers: they notice it is gone."""
    code = (
        "import sys, time\n"
        "from pathlib import Path, PurePath\n"
        "from lrp_cli.pipeline.decoding import Decoder\n"
        "from lrp_cli.images import InputItem\n"
        "from lrp_cli.models import Preprocessing\n"
        f"item = InputItem(Path({str(SAMPLES / 'coffee-cup.jpg')!r}), PurePath('c.jpg'))\n"
        "decoder = Decoder([item] * 4, Preprocessing(), workers=2)\n"
        "print(*decoder._pool._processes, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(workers) == 2
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_spawned_workers_decode_the_same(tmp_path, monkeypatch):
    """Where fork is missing (Windows, macOS's default), workers are spawned: fresh
    interpreters that import only lrp_cli.pipeline.decoding's own dependencies."""
    from lrp_cli.pipeline import decoding

    monkeypatch.setattr(decoding.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    items = _items(tmp_path)
    with Decoder(items, PRE, workers=1) as decoder:
        assert decoder._pool._mp_context.get_start_method() == "spawn"
        spawned = list(decoder)
    with Decoder(items, PRE, workers=0) as decoder:
        inline = list(decoder)
    assert [(i, e) for i, _, e in spawned] == [(i, e) for i, _, e in inline]
    for (_, a, _), (_, b, _) in zip(spawned, inline, strict=True):
        assert (a is None and b is None) or np.array_equal(a, b)
