"""What a run's TensorBoard files hold: the tags RL users read (CleanRL's), and the run config as text and as
hyperparameters."""

from __future__ import annotations

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from townlet.train import Trainer
from townlet.train.metrics import read_metrics

from .test_runner import LR_DECAY, PPO_SMALL, small_config

CHARTS = ("charts/episodic_return", "charts/episodic_length", "charts/SPS", "charts/learning_rate", "charts/epsilon")


def events(run_dir) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_has_the_usual_tags_and_the_run_config(tmp_path):
    config = small_config(steps=2400, logging={"interval_steps": 800, "checkpoint_every": 10**6, "tensorboard": True},
                          **LR_DECAY)  # lr from 1e-3 to 1e-4 over 4000 agent-steps
    Trainer(config, tmp_path).run()
    tb = events(tmp_path)
    scalars = set(tb.Tags()["scalars"])
    assert {*CHARTS, "losses/td_loss", "losses/q_values"} <= scalars, scalars
    assert not any(tag.startswith("train/") for tag in scalars)  # the old tags are gone
    episodes, learner = read_metrics(tmp_path)
    assert [e.step for e in tb.Scalars("charts/SPS")] == [row["step"] for row in learner] == [800, 1600, 2400]
    assert [e.value for e in tb.Scalars("charts/learning_rate")] == pytest.approx([8.2e-4, 6.4e-4, 4.6e-4])
    # each interval's mean over the episodes that ended in it, as the metrics database has them
    for event in tb.Scalars("charts/episodic_return"):
        ended = [e for e in episodes if event.step - 800 < e["step"] <= event.step]
        assert event.value == pytest.approx(sum(e["return"] for e in ended) / len(ended), rel=1e-5)
    assert tb.Scalars("losses/td_loss")[-1].step == 2400
    text = tb.Tensors("run_config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert yaml.safe_load("\n".join(line[4:] for line in text.splitlines())) == config.model_dump(mode="json")
    hparams = tb.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["learner.lr"].number_value == config.learner.lr
    assert start.session_start_info.hparams["algorithm"].string_value == "dqn"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/experiment"])
    assert "charts/episodic_return" in [m.name.tag for m in experiment.experiment.metric_infos]


def test_ppo_writes_its_own_losses(tmp_path):
    config = small_config("L2_partial_fixed", 768, **PPO_SMALL)
    config = config.model_copy(update={"logging": config.logging.model_copy(
        update={"interval_steps": 256, "tensorboard": True})})
    Trainer(config, tmp_path).run()
    scalars = set(events(tmp_path).Tags()["scalars"])
    assert {"losses/loss", "losses/values", "losses/value_loss", "losses/policy_loss", "losses/entropy",
            "losses/approx_kl", "losses/clipfrac", "charts/learning_rate"} <= scalars, scalars
    assert "losses/td_loss" not in scalars and "charts/epsilon" not in scalars
