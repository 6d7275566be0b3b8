"""Which timm classifiers the engine explains, and whether LRP-0 conserves on them.

Each model is built by timm with random weights (seed 0, 10 classes), every bias, BatchNorm
shift and learned token zeroed and every layer rescaled (tests/test_beyond_cnns.zero_shifts),
in float64. LRP-0 (config ``zero``) then conserves exactly: sum(relevance) = target logit. A model
the engine cannot explain must be refused, naming the node. Writes results.jsonl beside this
file; README.md there has the table.

    python experiments/timm_coverage/run.py
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

import timm  # noqa: E402

from lrp_cli.config import load_config  # noqa: E402
from lrp_cli.engine import Explainer  # noqa: E402
from tests.test_beyond_cnns import zero_shifts  # noqa: E402

MODELS = [
    "resnet18", "resnet50d", "seresnext26d_32x4d", "cspresnet50", "repvgg_a0", "dla34",
    "xception41", "inception_v3", "densenet121", "hrnet_w18_small", "regnety_002",
    "efficientnet_b0", "mobilenetv3_small_100", "mobilenetv4_conv_small", "ghostnet_100",
    "rexnet_100", "nfnet_l0", "vgg11", "convnext_atto", "convnextv2_atto", "poolformer_s12",
    "vit_tiny_patch16_224", "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224",
    "beit_base_patch16_224", "eva02_tiny_patch14_224", "cait_xxs24_224",
    "swin_tiny_patch4_window7_224", "pvt_v2_b0", "levit_128s", "efficientformer_l1", "fastvit_t8",
    "coatnet_0_rw_224",
    "maxvit_tiny_tf_224", "mobilevit_xxs", "tiny_vit_5m_224", "edgenext_xx_small",
    "mixer_b16_224", "resmlp_12_224",
]  # fmt: skip


def measure(name: str) -> dict:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10)
    side = model.pretrained_cfg["input_size"][-1]
    with torch.no_grad():
        for module in model.modules():  # some heads start at zero (MLP-Mixer): no logit at all
            weight = getattr(module, "weight", None)
            if isinstance(module, torch.nn.Linear) and not weight.any():
                weight.normal_(0, 0.02)
    model = zero_shifts(model).double().eval()
    x = torch.randn(1, 3, side, side, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = Explainer(model, load_config("zero").composite())(x)
    logit = result.logits[0, result.targets[0]]
    return {
        "side": side,
        "logit": logit.item(),
        "sum_over_logit": (result.relevance.sum() / logit).item(),
        "forward_error": (result.logits - model(x)).abs().max().item(),
    }


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for name in MODELS:
        start = time.perf_counter()
        try:
            row = {"model": name, **measure(name)}
        except Exception as error:  # the refusal is the result
            row = {"model": name, "refused": f"{type(error).__name__}: {error}"}
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"timm": timm.__version__, "torch": torch.__version__}
    lines = [json.dumps({"meta": meta})] + [json.dumps(r) for r in rows]
    (HERE / "results.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
