"""SpRAy (``lrp spray``): graph, embedding and eigengap units, a planted Clever-Hans shortcut
that the analysis must find (and must not find where there is none), the command, the report.

The Clever-Hans model is trained here in seconds (experiments/spray_clever_hans/clever_hans.py:
digits with a tag in one class); the browser test opens the report in headless Chromium.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from lrp_cli.analysis import spray as sp
from lrp_cli.cli import main

pytest.importorskip("sklearn")
pytest.importorskip("scipy")

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "spray_clever_hans"


def blobs(sizes, dim=64, spread=0.05, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian groups: (features, group of each row)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim))
    groups = np.repeat(np.arange(len(sizes)), sizes)
    return centres[groups] + spread * rng.normal(size=(len(groups), dim)), groups


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = {(int(x), int(y)) for x, y in zip(a, b, strict=True)}
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


# --------------------------------------------------------------------------------------------
# units


def test_knn_graph_is_symmetric_and_links_each_map_to_its_nearest_neighbours():
    x = np.random.default_rng(1).normal(size=(80, 12)).astype(np.float32)
    graph = sp.knn_affinity(x, neighbors=5)
    assert graph.shape == (80, 80)
    assert abs(graph - graph.T).max() == 0
    assert graph.diagonal().max() == 0
    assert set(np.unique(graph.data)) <= {0.5, 1.0}
    distances = np.linalg.norm(x[:, None] - x[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    nearest = np.argsort(distances, axis=1)[:, :5]
    for i in range(80):
        assert set(graph[i].indices) >= set(nearest[i])  # its own neighbours, and the mutual
        for j in nearest[i]:
            assert graph[i, j] == (1.0 if i in nearest[j] else 0.5)


def test_sparse_embedding_equals_a_dense_eigendecomposition():
    x = np.random.default_rng(2).normal(size=(70, 6))  # one connected cloud
    graph = sp.knn_affinity(x, neighbors=6)
    values, vectors = sp.spectral_embedding(graph, 8, seed=0)
    dense = graph.toarray()
    scale = 1 / np.sqrt(dense.sum(axis=1))
    laplacian = np.eye(len(dense)) - scale[:, None] * dense * scale[None]
    expected_values, expected_vectors = np.linalg.eigh(laplacian)
    np.testing.assert_allclose(values, expected_values[:8], atol=1e-9)
    assert np.diff(expected_values[:9]).min() > 1e-3  # distinct: each vector is unique up to sign
    overlap = expected_vectors[:, :8].T @ vectors
    np.testing.assert_allclose(np.abs(np.diag(overlap)), 1.0, atol=1e-7)


@pytest.mark.parametrize("k", [2, 3, 4, 6])
def test_eigengap_finds_the_number_of_blocks_of_a_block_diagonal_affinity(k):
    from scipy import sparse

    rng = np.random.default_rng(k)
    blocks = []
    for size in rng.integers(15, 40, k):
        block = rng.uniform(0.2, 1.0, (size, size))
        block = (block + block.T) / 2
        np.fill_diagonal(block, 0)
        blocks.append(block)
    affinity = sparse.csr_matrix(sparse.block_diag(blocks))
    values, _ = sp.spectral_embedding(affinity, 10, seed=0)
    assert sp.choose_clusters(values)[0] == k
    np.testing.assert_allclose(values[:k], 0, atol=1e-9)


def test_more_disconnected_groups_than_eigenvalues_give_that_many_clusters():
    x, groups = blobs([12] * 14, dim=16, spread=0.01, seed=6)
    result = sp.analyse(x, neighbors=4, eigenvalues=6)
    assert result.k == 6 and np.all(result.eigenvalues < 1e-9)
    assert all(len(set(result.labels[groups == g])) == 1 for g in range(14))  # none is split


@pytest.mark.parametrize("sizes", [[60, 40], [50, 30, 20], [40, 30, 20, 15, 10]])
def test_spray_recovers_separated_groups_with_k_from_the_eigengap(sizes):
    x, groups = blobs(sizes)
    result = sp.analyse(x, neighbors=5)
    assert (result.k, result.chosen_by) == (len(sizes), "eigengap")
    assert same_partition(result.labels, groups)
    assert [c.size for c in result.clusters] == sorted(sizes, reverse=True)
    assert result.separation > 0.99
    assert all(np.all(np.diff(result.distances[c.members]) >= 0) for c in result.clusters)


def test_no_split_is_reported_in_a_single_gaussian_cloud_but_clusters_can_be_forced():
    x = np.random.default_rng(3).normal(size=(300, 20))
    assert sp.analyse(x).k == 1
    forced = sp.analyse(x, clusters=3)
    assert (forced.k, forced.chosen_by, len(forced.clusters)) == (3, "fixed", 3)
    assert forced.separation < 0.5


def test_relative_gaps_ignore_large_steps_far_along_the_spectrum():
    # two groups (two zero eigenvalues), then a spectrum whose steps widen further out
    values = [0.0, 0.0, 0.07, 0.08, 0.12, 0.15, 0.17, 0.19, 0.30, 0.32]
    assert int(np.argmax(np.diff(values))) + 1 == 8  # the largest absolute step is far out
    assert sp.choose_clusters(values)[0] == 2


def test_same_seed_same_result_and_the_seed_is_used():
    x, _ = blobs([50, 45], spread=1.2, seed=4)
    first, again = sp.analyse(x, clusters=3, seed=7), sp.analyse(x, clusters=3, seed=7)
    np.testing.assert_array_equal(first.labels, again.labels)
    np.testing.assert_array_equal(first.embedding, again.embedding)
    np.testing.assert_array_equal(first.eigenvalues, again.eigenvalues)
    other = sp.spray(x.reshape(-1, 8, 8), clusters=3, seed=8, size=8)
    assert not np.array_equal(first.embedding, other.embedding)  # another start vector


def test_no_n_by_n_matrix_is_allocated():
    import tracemalloc

    x, groups = blobs([3000, 2000, 1000], dim=32, spread=0.3, seed=5)
    x = x.astype(np.float32)
    tracemalloc.start()
    try:
        result = sp.analyse(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.k == 3 and same_partition(result.labels, groups)
    assert peak < 0.25 * len(x) ** 2 * 8  # a dense float64 N x N would be 288 MB


def test_downscale_averages_blocks_and_normalise_removes_the_scale():
    maps = np.arange(2 * 64 * 64, dtype=np.float32).reshape(2, 64, 64)
    small = sp.downscale(maps, 32)
    np.testing.assert_allclose(small[0, 0, 0], maps[0, :2, :2].mean())
    odd = sp.downscale(np.ones((1, 50, 30), np.float32), 32)
    np.testing.assert_allclose(odd, 1.0, rtol=1e-6)
    features = sp.prepare(np.stack([maps[0], 5 * maps[0]]), 16)
    np.testing.assert_allclose(features[0], features[1], rtol=1e-6)
    np.testing.assert_allclose(np.abs(features).sum(axis=1), 1.0, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# the planted shortcut


def _load_experiment():
    spec = importlib.util.spec_from_file_location("clever_hans", EXPERIMENT / "clever_hans.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def clever_hans():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: one thread is the faster here
    try:
        ch = _load_experiment()
        data = ch.make_data(seed=0)
        model = ch.train(data, seed=0)
        yield ch, data, model
    finally:
        torch.set_num_threads(threads)


def test_clever_hans_cluster_is_found_by_the_eigengap(clever_hans):
    ch, data, model = clever_hans
    c = ch.TAGGED_CLASS
    in_class = data.y.numpy() == c
    x, tagged = data.x[in_class], data.tagged[in_class]
    assert 0.25 < tagged.mean() < 0.35
    # the model really uses the tag: covering it lowers the class score ...
    with torch.no_grad():
        score = model(x[tagged])[:, c]
        covered = model(ch.cover_tag(x[tagged]))[:, c]
    assert (covered < score).all() and covered.mean() < 0.5 * score.mean()
    # ... and the engine's heatmaps of the tagged images light it up
    maps = ch.heatmaps(model, x, c)
    share = ch.tag_share(maps)
    assert share[tagged].mean() > 0.2 and share[~tagged].mean() < 0.02  # the tag: 1.6 % of pixels
    result = sp.spray(maps)
    assert result.chosen_by == "eigengap" and 2 <= result.k <= 5
    mostly_tagged = [cl for cl in result.clusters if tagged[cl.members].mean() > 0.5]
    held = sum(tagged[cl.members].sum() for cl in mostly_tagged) / tagged.sum()
    assert held >= 0.9
    assert result.atypical in {cl.index for cl in mostly_tagged}
    # the mean heatmap of the tagged cluster holds its relevance on the tag
    tag_cluster = result.means[mostly_tagged[0].index]
    assert ch.tag_share(tag_cluster[None])[0] > 0.2


def test_no_split_is_reported_for_a_class_without_the_tag(clever_hans):
    ch, data, model = clever_hans
    in_class = data.y.numpy() == ch.UNTAGGED_CLASS
    assert not data.tagged[in_class].any()
    maps = ch.heatmaps(model, data.x[in_class], ch.UNTAGGED_CLASS)
    result = sp.spray(maps)
    assert result.k == 1 and result.atypical is None
    assert sp.spray(maps, clusters=2).separation < 0.6  # a forced split is no clean cut


# --------------------------------------------------------------------------------------------
# the command


def fake_run(folder: Path, seed: int = 0) -> Path:
    """An ``lrp explain`` output folder: maps of class 1 (two kinds) and class 2, records."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    records = []
    corner = np.zeros((32, 32), np.float32)
    corner[:6, :6] = 1
    centre = np.zeros((32, 32), np.float32)
    centre[12:20, 10:22] = 1
    for i in range(60):
        target, kind = (1, corner if i < 18 else centre) if i < 40 else (2, centre.T)
        relevance = kind + 0.15 * rng.normal(size=(32, 32)).astype(np.float32)
        photo = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(photo)
        np.save(folder / f"img{i:02d}.npy", relevance)
        records.append(
            {
                "input": str(photo),
                "sample": None,
                "status": "explained",
                "error": None,
                "outputs": {"heatmap": None, "relevance": str(folder / f"img{i:02d}.npy")},
                "model": "mypkg.nets:Net",
                "target": target,
                "class_name": {1: "one", 2: "two"}[target],
            }
        )
    failed = {"input": "bad.png", "status": "failed", "error": "x", "outputs": None}
    lines = [json.dumps(r) for r in [*records, failed]]
    (folder / "records.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """``lrp spray --from`` on a fake run: (output folder, CLI result)."""
    root = tmp_path_factory.mktemp("spray")
    run = fake_run(root / "run")
    result = CliRunner().invoke(main, ["spray", "--from", str(run), "-o", str(root / "out")])
    return root / "out", result


def test_spray_from_a_run_groups_by_class_and_writes_its_outputs(report):
    out, result = report
    assert result.exit_code == 0, result.output
    data = json.loads((out / "spray.json").read_text())
    classes = {c["class"]: c for c in data["classes"]}
    assert sorted(classes) == [1, 2]
    assert classes[1]["clusters"] == 2 and classes[2]["clusters"] == 1
    assert sorted(c["size"] for c in classes[1]["cluster"]) == [18, 22]
    assert classes[1]["atypical_cluster"] == 1  # the small corner group
    assert len(classes[1]["eigenvalues"]) == 10 and classes[1]["eigengap"] > 0
    assert len(data["inputs"]) == 60
    by_input = {Path(e["input"]).name: e for e in data["inputs"]}
    corner = {by_input[f"img{i:02d}.png"]["cluster"] for i in range(18)}
    assert corner == {1} and by_input["img30.png"]["cluster"] == 0
    assert {"embedding", "distance", "class_name"} <= set(data["inputs"][0])
    for c in classes[1]["cluster"]:
        mean = np.asarray(Image.open(out / c["mean_heatmap"]))
        assert mean.shape == (32, 32, 3)
    corner_mean = np.asarray(Image.open(out / "clusters/1/cluster-1.png")).astype(int)
    assert corner_mean[2, 2, 0] - corner_mean[2, 2, 2] > 200  # red (positive) in the corner
    assert "most atypical" in result.stdout and "class" in result.stdout


def test_a_rerun_with_the_same_seed_writes_the_same_files(report, tmp_path):
    out, _ = report
    run = out.parent / "run"
    again = CliRunner().invoke(main, ["spray", "--from", str(run), "-o", str(tmp_path), "-q"])
    assert again.exit_code == 0, again.output
    for name in ("spray.json", "spray.html", "clusters/1/cluster-1.png"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_the_report_is_self_contained(report):
    out, _ = report
    page = (out / "spray.html").read_text(encoding="utf-8")
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//)", page)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "<script src" not in page
    assert page.count("<svg") == 4  # eigenvalues and embedding, per class
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3 + 3 * 6 * 3  # 3 mean maps; 6 examples each: input, heatmap, overlay
    assert "eigengap: k = 2" in page


def test_a_folder_without_records_is_one_group_and_class_picks_classes(tmp_path):
    run = fake_run(tmp_path / "run")
    (run / "records.jsonl").unlink()
    bare = CliRunner().invoke(main, ["spray", "--from", str(run), "-o", str(tmp_path / "a")])
    assert bare.exit_code == 0, bare.output
    assert "classes are unknown: one group" in bare.output
    data = json.loads((tmp_path / "a/spray.json").read_text())
    assert [(c["class"], c["maps"], c["clusters"]) for c in data["classes"]] == [(None, 60, 3)]
    run = fake_run(tmp_path / "run2")
    args = ["spray", "--from", str(run / "records.jsonl"), "--class", "TWO", "-q"]
    only = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "b")])
    assert only.exit_code == 0 and only.stdout == ""
    data = json.loads((tmp_path / "b/spray.json").read_text())
    assert [c["class"] for c in data["classes"]] == [2]


def test_spray_explains_inputs_and_a_rerun_from_its_maps_agrees(tmp_path, monkeypatch):
    (tmp_path / "sprayme.py").write_text(
        "import torch\n"
        "def net():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),\n"
        "        torch.nn.Flatten(), torch.nn.Linear(4 * 16 * 16, 3))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = np.random.default_rng(0)
    for i in range(14):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
            tmp_path / f"p{i}.png"
        )
    model = ["-m", "sprayme:net", "--input-size", "16", "-t", "1", "--min-maps", "5"]
    args = ["spray", *map(str, sorted(tmp_path.glob("p*.png"))), *model, "-o", "out"]
    with monkeypatch.context() as m:
        m.chdir(tmp_path)
        first = CliRunner().invoke(main, args)
        assert first.exit_code == 0, first.output
        assert len(list((tmp_path / "out/maps").glob("p*.npy"))) == 14
        again = CliRunner().invoke(main, ["spray", "--from", "out/maps", "-o", "again"])
        assert again.exit_code == 0, again.output
    one = json.loads((tmp_path / "out/spray.json").read_text())
    two = json.loads((tmp_path / "again/spray.json").read_text())
    assert [e["cluster"] for e in one["inputs"]] == [e["cluster"] for e in two["inputs"]]
    assert one["classes"][0]["class"] == 1 and one["classes"][0]["maps"] == 14


def test_usage_errors_and_a_missing_extra_exit_with_status_2(tmp_path, monkeypatch):
    run = fake_run(tmp_path / "run")
    both = CliRunner().invoke(main, ["spray", "x.png", "--from", str(run)])
    assert both.exit_code == 2 and "not both" in both.output
    real = sp.find_spec
    monkeypatch.setattr(sp, "find_spec", lambda name: None if name == "sklearn" else real(name))
    missing = CliRunner().invoke(main, ["spray", "--from", str(run), "-o", str(tmp_path / "o")])
    assert missing.exit_code == 2
    assert missing.output.strip().splitlines() == [
        "error: SpRAy needs scikit-learn: pip install 'lrp-cli[analysis]'"
    ]
    assert not (tmp_path / "o").exists()


def test_importing_the_package_and_the_spray_modules_imports_neither_sklearn_nor_scipy():
    code = (
        "import sys, lrp_cli.cli, lrp_cli.analysis.spray, lrp_cli.analysis.spray_report, "
        "lrp_cli.analysis.spray_run; print(sorted({'sklearn', 'scipy'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# the report in a real browser

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary found")
def test_the_report_renders_in_headless_chromium_without_errors(report, tmp_path):
    out, _ = report
    url = (out / "spray.html").resolve().as_uri()
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    flags += [f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [*flags, "--enable-logging=stderr", "--v=0", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout).group(1)
    images = len(re.findall(r"<img ", dom.stdout))
    assert 'data-status="ok"' in body, body
    assert f'data-images="{images}/{images}"' in body and images > 40
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console
    shot = out / "spray-screenshot.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1280,1600", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (1600, 1280)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert red.sum() > 500  # heatmaps are drawn, not only text
