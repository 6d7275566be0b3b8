"""YAML configs: presets, validation errors with file and line, and rule matching."""

import warnings

import pytest
import torch
from torch import nn

from lrp_cli.config import ConfigError, list_presets, load_config, parse_config
from lrp_cli.engine import CompositeError, Explainer

PRESETS = [
    "epsilon-plus-flat", "epsilon-gamma-box", "epsilon-alpha2-beta1-flat", "epsilon-plus",
    "epsilon-alpha2-beta1", "zero", "epsilon", "montavon-vgg16",
]  # fmt: skip


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.ReLU(),
                                        nn.Linear(8, 3))  # fmt: skip

    def forward(self, x):
        return self.classifier(self.features(x))


def _rules(text: str) -> dict[str, str]:
    explainer = Explainer(Net(), parse_config(text).composite(), input_bounds=(-1.0, 1.0))
    return {row.name: row.rule for row in explainer.layer_rules}


def test_every_preset_loads_and_is_listed():
    presets = list_presets()
    assert set(PRESETS) <= set(presets)
    assert all(presets[name] for name in PRESETS), "every preset has a description"
    for name in PRESETS:
        load_config(name).composite()


def test_names_and_positions_win_over_types_and_first_match_wins():
    with pytest.warns(UserWarning, match="position=last"):  # shadowed entries are reported
        rules = _rules(
            """
rules:
  - match: {type: Conv2d}
    rule: gamma
    gamma: 0.5
  - match: {type: Conv2d}
    rule: zplus
  - match: {position: first}
    rule: flat
  - match: {name: "classifier.*", type: Linear}
    rule: epsilon
    epsilon: 0.1
  - match: {position: last}
    rule: zero
default: {rule: epsilon, epsilon: 1.0e-3}
"""
        )
    assert rules["features.0"].startswith("flat")
    assert rules["features.2"].startswith("gamma(gamma=0.5")
    assert rules["classifier.1"].startswith("epsilon(epsilon=0.1")
    assert rules["classifier.3"].startswith("epsilon(epsilon=0.1")  # the name entry came first


def test_position_ranges_and_default():
    rules = _rules(
        """
rules:
  - match: {position: "1:3"}
    rule: zplus
default: zero
"""
    )
    names = ("features.0", "features.2", "classifier.1", "classifier.3")
    assert [rules[n].split("(")[0] for n in names] == ["zero", "zplus", "zplus", "zero"]


def test_pattern_matching_nothing_warns_or_fails_when_strict():
    text = "rules:\n  - match: {name: 'nothing.*'}\n    rule: flat\n"
    with pytest.warns(UserWarning, match=r"<config>:2: name=nothing\.\*"):
        _rules(text)
    with pytest.raises(CompositeError, match="matches no layer"):
        _rules(text + "strict: true\n")


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "rules:\n  - match: {type: Conv2d}\n    rule: gama\n",
            r"cfg.yaml:3: unknown rule 'gama' \(did you mean 'gamma'\?\)",
        ),
        (
            "rules:\n  - match: {type: Conv2d}\n    rule: gamma\n    gama: 1\n",
            r"cfg.yaml:4: unknown parameter for rule gamma 'gama' \(did you mean 'gamma'\?\)",
        ),
        (
            "rules:\n  - match: {type: Conv2d}\n    rule: gamma\n    gamma: big\n",
            r"cfg.yaml:4: gamma of rule gamma must be a number",
        ),
        (
            "rules:\n  - match: {type: Conv2d}\n    rule: epsilon\n    epsilon: -1\n",
            r"cfg.yaml:4: epsilon must be a non-negative number",
        ),
        (
            "rules:\n  - match: {position: second}\n    rule: flat\n",
            r"cfg.yaml:2: position must be",
        ),
        (
            "rules:\n  - match: {nmae: x}\n    rule: flat\n",
            r"cfg.yaml:2: unknown match key 'nmae' \(did you mean 'name'\?\)",
        ),
        (
            "rules:\n  - match: {type: Conv2d}\n    rule: alpha_beta\n    alpha: 3\n",
            r"cfg.yaml:2: rule alpha_beta: alpha - beta must be 1",
        ),
        (
            "rules:\n  - match: {type: Conv2d}\n",
            r"cfg.yaml:2: a rule entry needs both",
        ),
        (
            "maxpol: average\n",
            r"cfg.yaml:1: unknown top-level key 'maxpool'|did you mean 'maxpool'",
        ),
        (
            "maxpool: biggest\n",
            r"cfg.yaml:1: maxpool must be",
        ),
        (
            "rules: [\n",
            r"cfg.yaml:\d+: YAML syntax error",
        ),
        (
            "default: pass\n",
            r"cfg.yaml:1: rule pass cannot be the default rule",
        ),
        (
            "lrn: {mode: sideways}\n",
            r"cfg.yaml:1: rule lrn: mode must be identity or taylor",
        ),
    ],
)
def test_config_errors_name_file_and_line(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(text, source="cfg.yaml")


def test_unknown_preset_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError, match="did you mean epsilon-plus-flat"):
        load_config("epsilon-plus-flt")
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("preset", ["epsilon-gamma-box", "epsilon-alpha2-beta1-flat"])
def test_config_file_round_trip(tmp_path, preset):
    """A preset saved to a file and loaded from there assigns the same rules, to the bit."""
    from importlib import resources

    text = resources.files("lrp_cli.configs").joinpath(f"{preset}.yaml").read_text()
    path = tmp_path / "mine.yml"
    path.write_text(text)
    from_file, from_name = load_config(path), load_config(preset)
    assert (from_file.name, from_file.source) == ("mine", str(path))
    assert from_file.description == from_name.description != ""
    torch.manual_seed(0)
    model, x = Net(), torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every entry of the file matches a layer
        ours = Explainer(model, from_file.composite(), input_bounds=(-3.0, 3.0))
    theirs = Explainer(model, from_name.composite(), input_bounds=(-3.0, 3.0))
    rows = [(row.name, row.rule) for row in ours.layer_rules]
    assert rows == [(row.name, row.rule) for row in theirs.layer_rules]
    assert len({rule for _, rule in rows}) >= 2  # the preset really assigns several rules
    torch.testing.assert_close(ours(x).relevance, theirs(x).relevance, rtol=0, atol=0)
    path.write_text(text + "oops: 1\n")
    with pytest.raises(ConfigError, match=r"mine\.yml:\d+"):
        load_config(path)  # and a broken copy is refused with the file's name and line


def test_pass_on_a_conv_is_refused():
    with pytest.raises(CompositeError, match="rule pass cannot be used on Conv2d 'features.0'"):
        _rules("rules:\n  - match: {position: first}\n    rule: pass\n")


def test_zbox_bounds_come_from_the_config_or_the_model():
    text = "rules:\n  - match: {position: first}\n    rule: zbox\n    low: -1\n    high: 2\n"
    x = torch.randn(1, 3, 8, 8)
    model = Net()
    ours = Explainer(model, parse_config(text).composite())(x).relevance
    default = "rules:\n  - match: {position: first}\n    rule: zbox\n"
    theirs = Explainer(model, parse_config(default).composite(), input_bounds=(-1.0, 2.0))(x)
    torch.testing.assert_close(ours, theirs.relevance)
    with pytest.raises(ValueError, match="input bounds"):
        Explainer(model, parse_config(default).composite())(x)
