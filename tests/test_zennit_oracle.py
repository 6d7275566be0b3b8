"""Oracle: our presets equal zennit 0.5.1's composites of the same name on torchvision models.

Random seeded weights, randomised BatchNorm statistics, float64; the tolerance is the
issue's 1e-6 x max|R|. zennit is a test-only dependency.
"""

import copy

import pytest
import torch
import torchvision

from lrp_cli.config import load_config
from lrp_cli.engine import Explainer

from .conftest import randomize_batchnorm

zennit = pytest.importorskip("zennit")
from zennit import composites as zc  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402
from zennit.torchvision import ResNetCanonizer, VGGCanonizer  # noqa: E402

MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)
LOW, HIGH = (0 - MEAN) / STD, (1 - MEAN) / STD

PRESETS = {
    "epsilon-plus-flat": lambda c: zc.EpsilonPlusFlat(canonizers=c),
    "epsilon-plus": lambda c: zc.EpsilonPlus(canonizers=c),
    "epsilon-gamma-box": lambda c: zc.EpsilonGammaBox(
        low=LOW[None, :, None, None], high=HIGH[None, :, None, None], canonizers=c
    ),
    "epsilon-alpha2-beta1-flat": lambda c: zc.EpsilonAlpha2Beta1Flat(canonizers=c),
    "epsilon-alpha2-beta1": lambda c: zc.EpsilonAlpha2Beta1(canonizers=c),
}
MODELS = {
    "vgg16": (lambda: torchvision.models.vgg16(num_classes=10), VGGCanonizer),
    "vgg16_bn": (lambda: torchvision.models.vgg16_bn(num_classes=10), VGGCanonizer),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), ResNetCanonizer),
    "resnet50": (lambda: torchvision.models.resnet50(num_classes=10), ResNetCanonizer),
}


def _fold_eps_into_variance(model):
    """zennit 0.5.1 keeps BatchNorm eps after merging (lrp-notes 5b): give it eps = 0."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var += module.eps
            module.eps = 0.0
    return model


# resnet18 runs by default (five presets, BatchNorm, residuals); the larger ones are slow
SLOW_MODELS = {"vgg16", "vgg16_bn", "resnet50"}


@pytest.fixture(
    scope="module",
    params=[pytest.param(m, marks=pytest.mark.slow) if m in SLOW_MODELS else m for m in MODELS],
)
def model_case(request):
    torch.manual_seed(1)
    build, canonizer = MODELS[request.param]
    model = randomize_batchnorm(build()).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    return request.param, model, canonizer, x


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_matches_zennit(model_case, preset):
    name, model, canonizer, x = model_case
    explainer = Explainer(model, load_config(preset).composite(), input_bounds=(LOW, HIGH))
    ours = explainer(x, target=[3, 7])

    theirs_model = _fold_eps_into_variance(copy.deepcopy(model))
    onehot = torch.zeros(2, 10, dtype=torch.float64)
    onehot[0, 3] = onehot[1, 7] = 1
    with Gradient(theirs_model, PRESETS[preset]([canonizer()])) as attributor:
        output, relevance = attributor(x.clone(), lambda out: out * onehot)

    torch.testing.assert_close(ours.logits, model(x), rtol=1e-10, atol=1e-10)
    scale = relevance.abs().max()
    assert scale > 0
    difference = (ours.relevance - relevance).abs().max()
    assert difference <= 1e-6 * scale, f"{name}/{preset}: {difference:.3e} vs max {scale:.3e}"
