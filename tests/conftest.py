"""Shared fixtures: small seeded models and float64 inputs; the ``--slow-sample`` option."""

import datetime
import hashlib

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption(
        "--slow-sample",
        type=int,
        default=0,
        metavar="N",
        help="run only N of the selected tests, drawn by --sample-seed (CI: a bounded, rotating "
        "share of the slow tests)",
    )
    parser.addoption(
        "--sample-seed",
        default=datetime.date.today().isoformat(),
        help="what the --slow-sample draw depends on (default: today's date, so each day runs "
        "another share; give the printed seed to repeat a draw)",
    )


def pytest_report_header(config):
    count, seed = config.getoption("--slow-sample"), config.getoption("--sample-seed")
    return f"slow sample: {count} tests, seed {seed}" if count else None


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(config, items):
    count = config.getoption("--slow-sample")
    if not count or len(items) <= count:
        return
    seed = config.getoption("--sample-seed")
    rank = {id(i): hashlib.sha256(f"{seed} {i.nodeid}".encode()).digest() for i in items}
    chosen = {id(i) for i in sorted(items, key=lambda i: rank[id(i)])[:count]}
    config.hook.pytest_deselected(items=[i for i in items if id(i) not in chosen])
    items[:] = [i for i in items if id(i) in chosen]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomize_batchnorm(model: torch.nn.Module, zero_shift: bool = False) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics so folding is really exercised."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                if zero_shift:
                    module.running_mean.zero_()
                    module.bias.zero_()
                else:
                    module.running_mean.normal_(0, 0.2)
                    module.bias.normal_(0, 0.2)
    return model


def zero_biases(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for module in model.modules():
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor) and not isinstance(
                module, torch.nn.modules.batchnorm._BatchNorm
            ):
                bias.zero_()
    return model
