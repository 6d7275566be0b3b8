"""Heatmap rendering, atomic writing, output names and JSON-lines records (lrp_cli.outputs)."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path, PurePath

import numpy as np
import pytest
from PIL import Image

from lrp_cli import outputs
from lrp_cli.outputs import (
    CMAP_NAMES,
    CMAPS,
    OutputError,
    RecordWriter,
    atomic_write,
    color_limit,
    degenerate_reason,
    output_paths,
    overlay,
    render_heatmap,
    save_npy,
    save_png,
)


def _pixels(relevance, **kwargs) -> list[list[int]]:
    image = render_heatmap(np.array(relevance, dtype=np.float32), **kwargs)
    assert image.mode == "RGB"
    return np.asarray(image).reshape(-1, 3).tolist()


# ---------------------------------------------------------------------------- colours


def test_bwr_positive_red_negative_blue_zero_white():
    assert _pixels([[1.0, -1.0, 0.0]]) == [[255, 0, 0], [0, 0, 255], [255, 255, 255]]


def test_scale_is_symmetric_around_zero():
    # limit = max |R| = 2: +2 is full red, -1 only half way to blue, 0 still white
    red, half_blue, white = _pixels([[2.0, -1.0, 0.0]])
    assert red == [255, 0, 0] and white == [255, 255, 255]
    assert half_blue[2] == 255 and abs(half_blue[0] - 128) <= 1 and half_blue[0] == half_blue[1]


def test_vmax_and_percentile_limits():
    assert color_limit(np.array([[3.0, -4.0]])) == 4.0
    assert color_limit(np.array([[3.0, -4.0]]), vmax=8.0) == 8.0
    (pixel,) = _pixels([[1.0]], vmax=2.0)
    assert pixel[0] == 255 and abs(pixel[1] - 128) <= 1
    relevance = np.full((32, 32), 0.01)
    relevance[0, 0] = 100.0  # one outlier would wash out the whole map
    assert color_limit(relevance, percentile=99) == pytest.approx(0.01)
    assert _pixels(relevance, percentile=99)[5] == [255, 0, 0]
    assert color_limit(np.zeros((2, 2))) == 1.0
    sparse = np.zeros((10, 10))
    sparse[0, 0] = -3.0
    assert color_limit(sparse, percentile=50) == 3.0  # percentile 0: fall back to max
    for bad in ({"vmax": 0.0}, {"vmax": float("nan")}, {"percentile": 0}, {"percentile": 101}):
        with pytest.raises(ValueError):
            color_limit(np.ones((2, 2)), **bad)


@pytest.mark.parametrize("name", CMAP_NAMES)
def test_every_colour_map_is_diverging_with_red_positive(name):
    table = CMAPS[name]
    assert table.shape == (511, 3) and table.dtype == np.uint8
    neg, zero, pos = _pixels([[-0.5, 0.0, 0.5]], cmap=name, vmax=1.0)
    assert pos[0] > pos[2] and neg[2] > neg[0]  # red side positive, blue side negative
    assert zero[0] == zero[1] == zero[2]  # neutral (white, grey or black) at zero


def test_named_maps():
    assert set(CMAP_NAMES) >= {"bwr", "seismic", "coldnhot", "coolwarm"}
    assert _pixels([[0.0]], cmap="coldnhot") == [[0, 0, 0]]
    assert _pixels([[0.0, 1.0, -1.0]], cmap="seismic")[0] == [255, 255, 255]
    with pytest.raises(ValueError, match="unknown colour map 'jet'"):
        render_heatmap(np.ones((2, 2)), cmap="jet")


def test_channels_are_summed_and_bad_shapes_refused():
    relevance = np.zeros((3, 2, 2))
    relevance[0, 0, 0] = 1.0
    relevance[2, 1, 1] = -1.0
    assert _pixels(relevance)[0] == [255, 0, 0] and _pixels(relevance)[3] == [0, 0, 255]
    with pytest.raises(ValueError, match="shape"):
        render_heatmap(np.zeros(5))


def test_degenerate_maps_are_detected_and_still_render():
    cases = {
        "zero everywhere": np.zeros((4, 4)),
        "NaN or infinite": np.array([[np.nan, 1.0], [np.inf, -1.0]]),
        "empty": np.zeros((0, 4)),
    }
    for expected, relevance in cases.items():
        assert expected in degenerate_reason(relevance)
    assert degenerate_reason(np.array([[0.0, 1e-30]])) is None
    assert _pixels(np.zeros((2, 2))) == [[255, 255, 255]] * 4
    assert _pixels([[np.nan, np.inf], [-np.inf, 1.0]]) == [[255, 255, 255]] * 3 + [[255, 0, 0]]
    assert _pixels(np.full((2, 2), np.nan)) == [[255, 255, 255]] * 4


def test_overlay_alpha_is_heatmap_opacity():
    heat = Image.new("RGB", (4, 4), (255, 0, 0))
    photo = Image.new("L", (8, 8), 100)  # other size and mode: resized, converted
    assert overlay(heat, photo, alpha=0.0).getpixel((0, 0)) == (100, 100, 100)
    assert overlay(heat, photo, alpha=1.0).getpixel((0, 0)) == (255, 0, 0)
    blended = overlay(heat, photo)
    assert blended.size == (4, 4) and blended.mode == "RGB"
    assert blended.getpixel((1, 1)) in {(177, 50, 50), (178, 50, 50)}
    with pytest.raises(ValueError):
        overlay(heat, photo, alpha=1.5)


# ---------------------------------------------------------------------------- writing


def test_save_png_and_npy_round_trip(tmp_path):
    image = Image.new("RGB", (3, 2), (1, 2, 3))
    save_png(image, tmp_path / "new" / "sub" / "a.png")  # folders are created
    assert Image.open(tmp_path / "new" / "sub" / "a.png").getpixel((2, 1)) == (1, 2, 3)
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    save_npy(array, tmp_path / "a.npy")
    assert np.array_equal(np.load(tmp_path / "a.npy", allow_pickle=False), array)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "new"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.npy").stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out.png"

    def half_then_fail(handle):
        handle.write(b"partial data")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError) as info:
        atomic_write(target, half_then_fail)
    message = str(info.value)
    assert message.startswith(f"{target}: cannot write: no space left on device")
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []

    target.write_bytes(b"old")
    with pytest.raises(OutputError):
        atomic_write(target, lambda handle: 1 / 0)
    assert target.read_bytes() == b"old"  # the previous file is intact
    assert list(tmp_path.iterdir()) == [target]


def test_failed_rename_and_interrupt_clean_up(tmp_path, monkeypatch):
    def no_replace(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    with monkeypatch.context() as patch:
        patch.setattr(outputs.os, "replace", no_replace)
        with pytest.raises(OutputError, match="permission denied"):
            save_npy(np.zeros(3), tmp_path / "r.npy")
    assert list(tmp_path.iterdir()) == []

    def interrupted(handle):
        handle.write(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "k.png", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot create the output folder"):
        save_png(Image.new("RGB", (1, 1)), tmp_path / "file" / "a.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(OutputError, match="cannot write"):
        save_png(Image.new("RGB", (1, 1)), tmp_path / "dir.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.png", "file"]


# ---------------------------------------------------------------------------- names


def test_output_paths_keep_sub_folders(tmp_path):
    paths = output_paths(tmp_path, PurePath("sub/cat.photo.jpg"))
    assert paths.heatmap == tmp_path / "sub" / "cat.photo.png"
    assert paths.relevance == tmp_path / "sub" / "cat.photo.npy"
    assert paths.overlay == tmp_path / "sub" / "cat.photo.overlay.png"
    assert output_paths(tmp_path, PurePath("noext")).heatmap == tmp_path / "noext.png"


@pytest.mark.parametrize("bad", ["../x.jpg", "a/../../x.jpg", "/etc/x.jpg", ".", ""])
def test_output_paths_refuse_escapes(tmp_path, bad):
    with pytest.raises(OutputError):
        output_paths(tmp_path / "out", PurePath(bad))


def test_output_paths_refuse_links_out_of_the_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "sub").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutputError, match="outside"):
        output_paths(tmp_path / "out", PurePath("sub/x.jpg"))
    (tmp_path / "out" / "inner").symlink_to(tmp_path / "out")
    assert output_paths(tmp_path / "out", PurePath("inner/x.jpg")).heatmap.name == "x.png"


# ---------------------------------------------------------------------------- records


def test_records_are_compact_utf8_lines(tmp_path):
    path = tmp_path / "records.jsonl"
    with RecordWriter(path) as writer:
        assert writer.write({"input": Path("café/ß.jpg"), "score": np.float32(0.5)})
        writer.write({"limits": np.array([-1.0, 1.0]), "bad": float("nan"), "n": np.int64(3)})
        # first line is on disk before the file is closed
        assert path.read_bytes().count(b"\n") == 2
    raw = path.read_bytes()
    assert (
        raw
        == ('{"input":"café/ß.jpg","score":0.5}\n{"limits":[-1.0,1.0],"bad":null,"n":3}\n').encode()
    )


def test_undecodable_names_still_give_valid_json():
    line = RecordWriter.encode({"input": "x\udcff.jpg"})
    assert json.loads(line) == {"input": "x\udcff.jpg"}
    assert line.endswith(b"\n") and line.count(b"\n") == 1


def test_records_to_stdout_stream():
    stream = io.TextIOWrapper(io.BytesIO(), encoding="latin-1")  # UTF-8 whatever the locale
    writer = RecordWriter("-", stdout=stream)
    writer.write({"label": "€"})
    writer.close()  # does not close stdout
    assert stream.buffer.getvalue() == '{"label":"€"}\n'.encode()


def test_broken_pipe_is_quiet():
    class Gone(io.RawIOBase):
        def writable(self):
            return True

        def write(self, data):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    writer = RecordWriter("-", stdout=Gone())
    assert writer.write({"a": 1}) is False
    assert writer.broken_pipe and writer.write({"a": 2}) is False


def test_broken_pipe_with_a_real_reader_that_leaves():
    code = (
        "from lrp_cli.outputs import RecordWriter\n"
        "w = RecordWriter('-')\n"
        "for i in range(100000):\n"
        "    if not w.write({'i': i}): break\n"
        "print('stopped at', i, file=__import__('sys').stderr)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout.readline() == b'{"i":0}\n'
    proc.stdout.close()  # like `| head -n 1`
    stderr = proc.stderr.read()
    assert proc.wait(timeout=30) == 0
    assert stderr.startswith(b"stopped at") and b"Error" not in stderr


def test_records_file_that_cannot_be_opened(tmp_path):
    with pytest.raises(OutputError, match="cannot open the records file"):
        RecordWriter(tmp_path / "missing" / "r.jsonl")
