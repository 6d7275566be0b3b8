"""The log-odds start (Montavon et al.'s top layer): softmin weights over the margins, LRP-0."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lrp_cli.engine import Composite, EpsilonRule, Explainer, ProportionalRule, ZeroRule
from lrp_cli.engine.graph import UnsupportedModelError


def direct(logits: torch.Tensor, target: int):
    """Softmin weights beta_c' over the margins m_c' = z_c - z_c', c' != c, from the formula."""
    z = logits.double()
    others = [k for k in range(z.shape[0]) if k != target]
    margins = torch.stack([z[target] - z[k] for k in others])
    beta = torch.exp(-margins) / torch.exp(-margins).sum()
    p = torch.softmax(z, 0)[target]
    return others, margins, beta, torch.log(p / (1 - p))


def zero_composite() -> Composite:
    return Composite(default=ZeroRule(), proportional=ProportionalRule(0.0))


def test_linear_model_relevance_is_the_softmin_weighted_margin_rule():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5, bias=False)).double().eval()
    x = torch.randn(3, 3, 2, 2, dtype=torch.float64)
    result = Explainer(model, zero_composite(), start="log-odds")(x, [0, 2, 4])
    w = model[1].weight.detach()
    for i, c in enumerate([0, 2, 4]):
        z = model(x[i : i + 1])[0].detach()
        others, margins, beta, eta = direct(z, c)
        # R_k = sum_c' beta_c' a_k (w_kc - w_kc')
        a = x[i].flatten()
        expected = sum(b * a * (w[c] - w[k]) for b, k in zip(beta, others, strict=True))
        torch.testing.assert_close(result.relevance[i].flatten(), expected)
        # the identity: sum R = sum_c' beta_c' m_c' (zero biases), at least the log-odds
        total = result.relevance[i].sum()
        torch.testing.assert_close(total, (beta * margins).sum())
        assert float(total) >= float(eta) - 1e-12
        torch.testing.assert_close(result.score[i], eta)


def test_identity_holds_through_a_relu_network_with_zero_biases():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(6, 4, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 7, bias=False),
    )
    model = model.double().eval()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    result = Explainer(model, zero_composite(), start="log-odds")(x)
    for i in range(4):
        z = model(x[i : i + 1])[0].detach()
        c = int(z.argmax())
        assert int(result.targets[i]) == c
        _, margins, beta, eta = direct(z, c)
        torch.testing.assert_close(result.relevance[i].sum(), (beta * margins).sum())
        torch.testing.assert_close(result.score[i], eta)


def test_one_dominant_competitor_gives_the_log_odds_itself():
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 3, bias=False)).double().eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[4.0, 0.0], [0.0, 3.0], [-30.0, -30.0]]))
    x = torch.tensor([[[[1.0]], [[1.0]]]], dtype=torch.float64)  # z = (4, 3, -60)
    result = Explainer(model, zero_composite(), start="log-odds")(x, 0)
    assert float(result.relevance.sum()) == pytest.approx(float(result.score[0]), abs=1e-12)
    # eta = 4 - log(e^3 + e^-60) = 1 - log(1 + e^-63)
    assert float(result.score[0]) == pytest.approx(1.0 - math.log1p(math.exp(-63.0)), abs=1e-12)


def test_the_last_layer_gets_lrp0_and_the_rule_table_says_so():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4)).eval()
    composite = Composite(default=EpsilonRule(0.5))
    logit, odds = Explainer(model, composite), Explainer(model, composite, start="log-odds")
    rules = {r.name: (r.rule, r.source) for r in odds.layer_rules}
    assert rules["3"][1] == "start: log-odds" and rules["3"][0].startswith("zero")
    assert rules["1"] == {r.name: (r.rule, r.source) for r in logit.layer_rules}["1"]
    x = torch.randn(2, 8)
    a, b = logit(x), odds(x)
    torch.testing.assert_close(a.score, a.logits.gather(1, a.targets[:, None]).squeeze(1))
    assert not torch.allclose(a.relevance, b.relevance)


def test_bad_start_and_a_model_not_ending_in_a_linear_layer():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with pytest.raises(UnsupportedModelError, match="log-odds"):
        Explainer(model, start="log-odds")
    with pytest.raises(ValueError, match="start must be one of"):
        Explainer(model, start="probability")
    Explainer(model)  # the logit start has no such requirement
