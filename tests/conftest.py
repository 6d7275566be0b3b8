"""Shared fixtures: small seeded models and float64 inputs."""

import pytest
import torch


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
