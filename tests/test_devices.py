"""Device names are checked before anything is built on them: a bad name, or a device this machine lacks, is a
ConfigError that says what is allowed."""

from __future__ import annotations

import pytest
import torch

from townlet.config_files import ConfigError
from townlet.devices import parse_device, require_device
from townlet.train import load_run_config
from townlet.train.runner import build_run


@pytest.mark.parametrize("name", ["potato", "cuda:x", "", "cuda:-1", "meta", "cpu cpu"])
def test_names_that_are_no_device_townlet_runs_on(name):
    with pytest.raises(ConfigError, match=r"allowed: cpu, cuda, cuda:N .* or mps") as err:
        parse_device(name, "--device")
    assert str(err.value).startswith("--device ")


def test_a_device_name_is_valid_without_the_device_but_not_usable():
    assert parse_device("cuda:3") == torch.device("cuda", 3)  # a run trained on CUDA is read anywhere
    assert require_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"device 'cuda:3': (this PyTorch .* is built without CUDA|no CUDA)"):
            require_device("cuda:3")
    else:
        count = torch.cuda.device_count()
        with pytest.raises(ConfigError, match=f"this machine has {count} CUDA device"):
            require_device(f"cuda:{count}")


def test_run_configs_check_the_name_and_building_a_run_checks_the_machine():
    with pytest.raises(ConfigError, match="device: device 'potato': not a device name"):
        load_run_config("L0_minimal", {"device": "potato"})
    config = load_run_config("L0_minimal", {"device": "cuda:7", "agents": 2})  # read, as from a checkpoint
    if torch.cuda.device_count() < 8:
        with pytest.raises(ConfigError, match=r"device \(run config\) 'cuda:7'"):
            build_run(config)
