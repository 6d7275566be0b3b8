"""The engine and ``lrp explain`` on a CUDA GPU, checked against the CPU.

CI has no GPU, so the tests marked ``needs_cuda`` are skipped there; a session lent a GPU runs
them with ``benchmarks/gpu_check.sh``. The flag handling of ``ieee_float32`` is tested here
everywhere (the flags can be set without a GPU).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner

from lrp_cli.cli import main
from lrp_cli.config import list_presets, load_config
from lrp_cli.engine import Explainer
from lrp_cli.engine.linear import ieee_float32
from lrp_cli.images import crop_image, load_image, to_tensor
from lrp_cli.models import load_model

from .conftest import randomize_batchnorm

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"
BOUNDS = (-2.2, 2.7)
FLAGS = (torch.backends.cudnn.conv, torch.backends.cuda.matmul)


@pytest.fixture
def tf32_allowed():
    """The global flags as a user who allows TF32 everywhere would leave them."""
    saved = [flag.fp32_precision for flag in FLAGS]
    for flag in FLAGS:
        flag.fp32_precision = "tf32"
    yield
    for flag, value in zip(FLAGS, saved, strict=True):
        flag.fp32_precision = value


def test_ieee_float32_holds_only_while_inside(tf32_allowed):
    with ieee_float32(torch.device("cuda")):
        assert [flag.fp32_precision for flag in FLAGS] == ["ieee", "ieee"]
    assert [flag.fp32_precision for flag in FLAGS] == ["tf32", "tf32"]
    with pytest.raises(KeyError), ieee_float32(torch.device("cuda")):
        raise KeyError("the engine failed")
    assert [flag.fp32_precision for flag in FLAGS] == ["tf32", "tf32"]
    with ieee_float32(torch.device("cpu")):
        assert [flag.fp32_precision for flag in FLAGS] == ["tf32", "tf32"]


def _model(name: str, dtype: torch.dtype):
    torch.manual_seed(0)
    if name == "efficientnet_lite0":
        model, size = load_model(name).module, 64
    else:
        model, size = randomize_batchnorm(torchvision.models.get_model(name, num_classes=10)), 32
    return model.to(dtype).eval(), torch.randn(3, 3, size, size, dtype=dtype)


@needs_cuda
@pytest.mark.parametrize("name", ["vgg11_bn", "resnet18", "densenet121", "efficientnet_lite0"])
@pytest.mark.parametrize("preset", sorted(set(list_presets()) - {"montavon-vgg16"}))
def test_float64_on_cuda_matches_the_cpu(name, preset):
    model, x = _model(name, torch.float64)
    composite = load_config(preset).composite()
    cpu = Explainer(model, composite, input_bounds=BOUNDS)(x, target=1)
    gpu_model = copy.deepcopy(model).cuda()
    gpu = Explainer(gpu_model, composite, input_bounds=BOUNDS)(x.cuda(), target=1)
    assert gpu.relevance.device.type == "cuda"
    scale = cpu.relevance.abs().max()
    torch.testing.assert_close(gpu.relevance.cpu(), cpu.relevance, rtol=1e-9, atol=1e-12 * scale)
    torch.testing.assert_close(gpu.logits.cpu(), cpu.logits, rtol=1e-12, atol=1e-12)


@needs_cuda
@pytest.mark.parametrize("preset", ["epsilon-plus-flat", "epsilon-gamma-box"])
def test_float32_on_cuda_is_as_exact_as_on_the_cpu(tf32_allowed, preset):
    """With TF32 allowed globally, the engine still computes IEEE float32: its error against
    float64 stays near the CPU's (TF32's 10-bit mantissa would put it far above)."""
    loaded = load_model("efficientnet_lite0")
    photo = crop_image(load_image(SAMPLES / "coffee-cup.jpg"), loaded.preprocessing)
    x = to_tensor(photo, loaded.preprocessing)[None]
    composite = load_config(preset).composite()
    bounds = loaded.preprocessing.bounds()
    exact = Explainer(loaded.module, composite, input_bounds=bounds)(x.double()).relevance
    cpu = Explainer(loaded.module, composite, input_bounds=bounds)(x).relevance
    gpu_model = copy.deepcopy(loaded.module).cuda()
    gpu = Explainer(gpu_model, composite, input_bounds=bounds)(x.cuda()).relevance.cpu()
    cpu_error = (cpu.double() - exact).abs().max()
    gpu_error = (gpu.double() - exact).abs().max()
    assert gpu_error <= 10 * cpu_error + 1e-7 * exact.abs().max(), (gpu_error, cpu_error)


@needs_cuda
def test_explain_on_cuda_writes_the_cpu_maps(tmp_path):
    """The whole command (decoding workers, batches copied to the GPU, writing) on the GPU."""
    maps, records = {}, {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        result = CliRunner().invoke(
            main,
            ["explain", str(SAMPLES), "-o", str(out), "--device", device, "--batch-size", "4",
             "--jsonl", str(out / "records.jsonl")],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        maps[device] = {p.name: np.load(p) for p in sorted(out.glob("*.npy"))}
        lines = (out / "records.jsonl").read_text().splitlines()
        records[device] = {r["input"]: r for r in map(json.loads, lines)}
    assert maps["cpu"].keys() == maps["cuda"].keys() and len(maps["cpu"]) == 6
    for name, expected in maps["cpu"].items():
        scale = np.abs(expected).max()
        np.testing.assert_allclose(maps["cuda"][name], expected, rtol=0, atol=1e-4 * scale)
    for key, record in records["cpu"].items():
        assert records["cuda"][key]["target"] == record["target"]
