"""Run configuration: what to train, with which algorithm, network, learner, replay and exploration, and how to
log.

Each packaged level ships a default run config (`train/configs/<level>.yaml`); `--set key=value` overrides any
field by its dotted path, validated like the file itself.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from townlet.config_files import (
    MAX_EXTENDS,
    ConfigError,
    deep_merge,
    format_validation_error,
    load_yaml_text,
    quote,
    read_extended_yaml,
    read_yaml,
    resolve_yaml_path,
    yaml_problem,
)
from townlet.devices import parse_device
from townlet.world.config import LEVEL_NAMES, LevelConfig, level_path, load_level


class _Strict(BaseModel):
    """Unknown fields are errors, and so are NaN and infinity (YAML .nan, .inf)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NetworkConfig(_Strict):
    """`mlp` (DQN) sees one observation; `lstm` (R2D2, PPO) carries memory across the episode; `feedforward` is
    the R2D2 or PPO learner and encoders with a Linear core in place of the LSTM: no memory (the memory
    ablation)."""

    kind: Literal["mlp", "lstm", "feedforward"] = "mlp"
    hidden: list[int] = Field(
        default_factory=lambda: [256, 256], min_length=1,
        description="mlp: the hidden layers; lstm/feedforward: the encoder layers before the LSTM (or core)",
    )
    lstm_hidden: int = Field(default=256, ge=1)
    head_hidden: int = Field(default=128, ge=1, description="hidden layer of the recurrent net's Q head")
    dueling: bool = True
    layer_norm: bool = False


class LearnerConfig(_Strict):
    lr: float = Field(default=5e-4, gt=0.0, le=1.0)
    lr_end: float | None = Field(
        default=None, gt=0.0, le=1.0, description="None: constant lr; else linear decay to it over lr_decay_steps"
    )
    lr_decay_steps: int = Field(default=10_000_000, ge=1, description="agent-steps (like ε, not updates)")
    adam_eps: float = Field(default=1e-5, gt=0.0, description="Adam's epsilon (1e-3, R2D2's, damps small gradients)")
    gamma: float = Field(default=0.99, gt=0.0, le=1.0)
    n_step: int = Field(default=3, ge=1, le=100, description="also for R2D2, capped by each training window")
    batch_size: int = Field(default=256, ge=1)
    target_update_every: int = Field(default=1000, ge=1)
    tau: float | None = Field(default=None, gt=0.0, le=1.0)
    grad_clip: float = Field(default=10.0, gt=0.0)
    huber_delta: float = Field(default=1.0, gt=0.0)
    double: bool = True
    value_rescale: bool = Field(
        default=False, description="learn h(Q), R2D2's value rescaling h(x) = sign(x)(sqrt(|x|+1) - 1) + 0.001x, "
        "with h's inverse in the targets: one scale for a death's -100 and a tick's reward",
    )
    learning_starts: int = Field(default=10_000, ge=0)
    replay_ratio: float = Field(
        default=0.25, gt=0.0, description="sampled transitions per environment (agent-)step"
    )


class ReplayConfig(_Strict):
    capacity: int = Field(default=200_000, ge=1)
    prioritized: bool = False
    burn_in: int = Field(default=8, ge=0)
    train_len: int = Field(default=16, ge=1)
    stride: int | None = Field(default=None, ge=1)
    stored_state: bool = Field(
        default=True, description="False: every sequence starts from a zero LSTM state (seed-era; ablation)"
    )
    split_episodes: bool = Field(
        default=False,
        description="True: the steps after an episode start inside a sampled sequence are trained too, from a zero"
        " state at that start (R2D2's cut at episode starts); False: they are masked, so the first burn_in to"
        " burn_in + stride - 1 steps of every episode never train",
    )


class ExplorationConfig(_Strict):
    start: float = Field(default=1.0, ge=0.0, le=1.0)
    end: float = Field(default=0.05, ge=0.0, le=1.0)
    decay_steps: int = Field(default=200_000, ge=1)
    schedule: Literal["linear", "exponential"] = "linear"
    spread: float = Field(
        default=0.0, ge=0.0, le=20.0,
        description="per-agent rates: agent i explores at ε ** (1 + spread * i / (N - 1)) (Ape-X: 7); 0: all at ε",
    )
    repeat_mu: float | None = Field(
        default=None, ge=0.0, description="εz-greedy: an exploratory action is repeated for n steps, P(n) ∝ n^-mu "
        "(Dabney et al.: 2), so exploring agents cross the town; None: plain ε-greedy",
    )
    repeat_max: int = Field(default=10, ge=1, description="εz-greedy: the longest repeat, in steps")


class ExploringStartsConfig(_Strict):
    """Exploring starts: with this probability a training episode begins from random meters (each uniform in
    [0.2, 1], money in [0, 1]) on a random affordance, and its first action is random, so every affordance is
    tried in every kind of state: being broke at the Job is met from the first episodes on, not only late in
    long ones. Evaluation always starts as the level says."""

    probability: float = Field(default=0.0, ge=0.0, le=1.0)


class GuidesConfig(_Strict):
    """Guided agents: this share of the training agents acts by a scripted needs policy instead of the network,
    so replay holds from the start what a policy that works before its money runs out does, for the learner to
    value off-policy. Their episodes stay out of the training metrics; evaluation is the network alone.
    `needs-memory` knows only the affordances its window has shown this episode; `needs` reads the layout;
    `needs-explore` is `needs-memory` that searches the cells it has not seen instead of moving at random;
    `needs-sweep` knows only its window and searches by a fixed round of the town, so it needs no memory and every
    action it takes is a function of the current observation (a teacher any learner can follow); `needs-recall`
    searches by the same round and remembers what its window has shown, as `needs-memory` does.
    `imitation` > 0 (recurrent learners) also trains the network to prefer the guide's action by `margin`
    (DQfD's large-margin loss, weighted by `imitation` beside the TD loss): on the guided agents' own steps
    (`imitate: guided`), or on every agent's steps, labelled with what the guide policy would have done there
    (`imitate: all`, DAgger-style; then `fraction` may be 0), or on every agent's steps where the guide has a
    purpose (`imitate: purposeful`: it heads for a needed place it knows, or uses one; its random moves, more
    than half its steps on L2_partial, are no labels)."""

    fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    policy: Literal["needs", "needs-memory", "needs-view", "needs-explore", "needs-sweep", "needs-recall"] = (
        "needs-memory")
    imitation: float = Field(default=0.0, ge=0.0, description="weight of the large-margin loss (DQfD's 1.0)")
    margin: float = Field(default=0.8, gt=0.0, description="how far the guide's action must lead (DQfD's 0.8)")
    imitate: Literal["guided", "all", "purposeful"] = "guided"


class ShapingConfig(_Strict):
    """Potential-based reward shaping on the meters (`townlet.explore.shaping`): replay stores the task reward
    plus γ Φ(s') − Φ(s), Φ = weight · Σ √meter (0 after a death), so what raises a low meter pays at once
    instead of as a death avoided much later. It leaves the optimal policy unchanged; episode returns and
    evaluation keep the level's reward. 0: off."""

    weight: float = Field(default=0.0, ge=0.0, description="Φ's scale; the task's death costs 100")


class CuriosityConfig(_Strict):
    """An intrinsic reward, annealed away once the agents survive consistently (variance of survival below a
    threshold AND mean above a share of the cap). `rnd`: Random Network Distillation, the novelty of the next
    observation. `counts`: 1 / sqrt(N) for an action taken N times in the same situation (cell, affordance, which meters
    are low). `episodic`: 1 / sqrt(n) for a situation (cell, which meters are low) met n times in this episode (NGU's
    episodic novelty): the layout is drawn anew every episode, so the need to search does not fade as lifetime
    novelty does."""

    enabled: bool = False
    kind: Literal["rnd", "counts", "episodic"] = "rnd"
    low_meter: float = Field(default=0.3, gt=0.0, le=1.0,
                             description="counts, episodic: a meter below this is 'low' in the counted situation")
    weight: float = Field(default=0.02, ge=0.0, description="initial weight; normalised RND rewards are ~1, "
                                                             "count bonuses 1 / sqrt(N) <= 1")
    decay: float = Field(default=0.99, gt=0.0, le=1.0)
    floor: float = Field(default=0.0, ge=0.0)
    window: int = Field(default=100, ge=2)
    variance_threshold: float = Field(default=2500.0, gt=0.0, description="on episode lengths, ticks^2")
    min_survival_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    lr: float = Field(default=1e-4, gt=0.0, description="RND only")
    hidden: int = Field(default=256, ge=1, description="RND only")
    embed: int = Field(default=64, ge=1, description="RND only")


class CurriculumConfig(_Strict):
    """`static`: full difficulty. `adversarial`: five stages per agent, from depletion 0.2 with `shaped`
    reward to the real game; advance on survival >= advance_rate (with entropy_gate < 1, also policy entropy <
    entropy_gate; 1, the default, is open: see `AdversarialCurriculum`), retreat on survival < retreat_rate,
    after min_episodes in a stage."""

    kind: Literal["static", "adversarial"] = "static"
    window: int = Field(default=20, ge=1)
    advance_rate: float = Field(default=0.7, ge=0.0, le=1.0)
    retreat_rate: float = Field(default=0.3, ge=0.0, le=1.0)
    entropy_gate: float = Field(default=1.0, gt=0.0, le=1.0)
    min_episodes: int = Field(default=10, ge=1)
    temperature: float = Field(default=1.0, gt=0.0, description="softmax temperature of Q for policy entropy")


class LoggingConfig(_Strict):
    interval_steps: int = Field(default=20_000, ge=1, description="agent-steps between metric rows")
    checkpoint_every: int = Field(default=250_000, ge=1)
    keep_checkpoints: int = Field(default=3, ge=1)
    tensorboard: bool = True
    save_replay: bool = True


class PPOConfig(_Strict):
    """Recurrent PPO (`algorithm: ppo`; CleanRL's ppo_atari_lstm, sb3-contrib's RecurrentPPO): every agent plays
    `rollout_len` steps, then `epochs` passes over `minibatches` minibatches of whole agents, each unrolled over
    the whole rollout from its stored LSTM state. It also reads learner.gamma, lr, lr_end, lr_decay_steps,
    adam_eps and grad_clip."""

    rollout_len: int = Field(default=64, ge=1, description="steps per agent between updates (BPTT length)")
    epochs: int = Field(default=3, ge=1)
    minibatches: int = Field(default=4, ge=1, description="of whole agents; at most `agents`")
    gae_lambda: float = Field(default=0.95, ge=0.0, le=1.0)
    clip_coef: float = Field(default=0.1, gt=0.0)
    entropy_coef: float = Field(default=0.01, ge=0.0)
    value_coef: float = Field(default=0.5, ge=0.0)
    normalize_returns: bool = Field(
        default=True, description="scale rewards by the running std of the discounted return (CleanRL's)"
    )


def _all(model: type[BaseModel], section: str, readers: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return {f"{section}.{name}": readers for name in model.model_fields}


Q_LEARNING = ("dqn", "r2d2")
# fields not every algorithm reads -> the algorithms that read them; any other field is read by all. Giving one
# a value other than its default under another algorithm is an error, not a no-op.
READ_BY: dict[str, tuple[str, ...]] = {
    "network.lstm_hidden": ("r2d2", "ppo"),
    "network.head_hidden": ("r2d2",),
    "network.dueling": Q_LEARNING,
    "network.layer_norm": ("dqn",),
    **{f"learner.{name}": Q_LEARNING for name in (
        "n_step", "batch_size", "target_update_every", "tau", "huber_delta", "double", "learning_starts",
        "replay_ratio", "value_rescale")},
    "replay.capacity": Q_LEARNING,
    **{f"replay.{name}": ("r2d2",) for name in (
        "prioritized", "burn_in", "train_len", "stride", "stored_state", "split_episodes")},
    **_all(ExplorationConfig, "exploration", Q_LEARNING),
    **_all(ExploringStartsConfig, "exploring_starts", Q_LEARNING),
    **_all(GuidesConfig, "guides", Q_LEARNING),
    **{f"guides.{name}": ("r2d2",) for name in ("imitation", "margin", "imitate")},
    **_all(ShapingConfig, "shaping", Q_LEARNING),
    **_all(CuriosityConfig, "curiosity", (*Q_LEARNING, "ppo")),  # ppo: the episodic kind only (checked below)
    **{f"curiosity.{name}": Q_LEARNING for name in ("lr", "hidden", "embed")},
    **_all(PPOConfig, "ppo", ("ppo",)),
}
NETWORKS: dict[str, tuple[str, ...]] = {
    "dqn": ("mlp",), "r2d2": ("lstm", "feedforward"), "ppo": ("lstm", "feedforward"),
}


def _readers_text(readers: tuple[str, ...]) -> str:
    names = ", ".join(repr(r) for r in readers)
    return f"only algorithm {names} reads it" if len(readers) == 1 else f"only algorithms {names} read it"


class RunConfig(_Strict):
    level: str = "L1_full"
    algorithm: Literal["dqn", "r2d2", "ppo"] = Field(
        default="dqn", description="dqn: an MLP on one observation; r2d2: a sequence learner (network.kind lstm, "
        "or feedforward for the memory ablation); ppo: recurrent PPO (network.kind lstm or feedforward)",
    )
    seed: int = Field(default=0, ge=0)
    device: str = Field(default="cpu", description="cpu, cuda, cuda:N or mps")
    agents: int = Field(default=64, ge=1)
    compile_world: bool = Field(
        default=False, description="torch.compile the world's step: faster steps after a compile at start",
    )
    steps: int | None = Field(default=1_000_000, ge=1, description="agent-steps to train for")
    minutes: float | None = Field(default=None, gt=0.0)
    network: NetworkConfig = NetworkConfig()
    learner: LearnerConfig = LearnerConfig()
    replay: ReplayConfig = ReplayConfig()
    exploration: ExplorationConfig = ExplorationConfig()
    exploring_starts: ExploringStartsConfig = ExploringStartsConfig()
    guides: GuidesConfig = GuidesConfig()
    shaping: ShapingConfig = ShapingConfig()
    curiosity: CuriosityConfig = CuriosityConfig()
    curriculum: CurriculumConfig = CurriculumConfig()
    ppo: PPOConfig = PPOConfig()
    logging: LoggingConfig = LoggingConfig()

    @field_validator("device")
    @classmethod
    def _device_name(cls, name: str) -> str:
        # the name only: whether this machine has the device is checked where a run is built (a run trained on
        # CUDA is still read, evaluated and reported on a CPU-only machine)
        parse_device(name)
        return name

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.steps is None and self.minutes is None:
            raise ValueError("steps/minutes: give at least one budget")
        if self.exploration.end > self.exploration.start:
            raise ValueError("exploration.end: must not exceed exploration.start")
        if self.network.kind not in NETWORKS[self.algorithm]:
            raise ValueError(
                f"network.kind: {self.network.kind!r} is not a network of algorithm {self.algorithm!r}; "
                f"allowed: {', '.join(NETWORKS[self.algorithm])}"
            )
        for key, readers in READ_BY.items():
            if self.algorithm in readers:
                continue
            section, name = key.split(".")
            part = getattr(self, section)
            # a changed value, not a mention: a resolved config (checkpoint, config.yaml) lists every field
            if getattr(part, name) != type(part).model_fields[name].default:
                raise ValueError(
                    f"{key}: {_readers_text(readers)}, and this run's algorithm is {self.algorithm!r}; remove it or "
                    f"set algorithm: {' or '.join(readers)}"
                )
        if self.algorithm == "ppo" and self.ppo.minibatches > self.agents:
            raise ValueError(
                f"ppo.minibatches: {self.ppo.minibatches} minibatches of whole agents need at least as many agents; "
                f"got agents {self.agents}"
            )
        if self.algorithm == "ppo" and self.curiosity.enabled and self.curiosity.kind != "episodic":
            raise ValueError(
                f"curiosity.kind: algorithm 'ppo' takes only 'episodic' (a per-episode count bonus added to the "
                f"reward); got {self.curiosity.kind!r}"
            )
        g = self.guides
        if g.imitation > 0 and g.fraction == 0 and g.imitate == "guided":
            raise ValueError(
                "guides.imitation: needs demonstrations (guides.fraction > 0, or guides.imitate: all or purposeful); "
                f"got fraction {g.fraction}, imitate {g.imitate!r}"
            )
        return self


def run_config_path(level: str) -> Path:
    return Path(str(resources.files("townlet.train") / "configs" / f"{level}.yaml"))


_KEY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_NUMBER = re.compile(r"^[+-]?(\d[\d_]*\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["learner.lr=1e-3", "agents=32"]` -> nested dict; values are read as YAML scalars/lists. A key set
    both as a value and as a section (`agents=1` with `agents.x=2`) is an error; a key given twice keeps the
    last value, as command-line options do."""
    out: dict[str, Any] = {}
    values: set[str] = set()  # the dotted keys given a value so far
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            raise ConfigError(
                f"--set {quote(pair)}: expected key=value with a dotted field name as the key, e.g. "
                "--set learner.lr=0.001 (the fields: docs/training.md)")
        try:
            value = load_yaml_text(raw)
        except (yaml.YAMLError, ValueError) as e:
            reason = yaml_problem(e, where=False) if isinstance(e, yaml.YAMLError) else f": {e}"
            raise ConfigError(
                f"--set {key}: cannot read the value {quote(raw)} as YAML{reason}; quote a text value, "
                f"e.g. --set '{key}=\"...\"'") from None
        parts = key.split(".")
        prefixes = {".".join(parts[:i]) for i in range(1, len(parts))}
        above, below = sorted(prefixes & values), sorted(v for v in values if v.startswith(key + "."))
        if above or below:
            section = above[0] if above else key
            raise ConfigError(
                f"--set {key}: {section} is set both as a value and as a section (--set {(above or below)[0]}=... "
                f"and --set {key}=...); give one of them")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _number_or_value(value)
        values.add(key)
    return out


def _number_or_value(value: Any) -> Any:
    """YAML 1.1 reads `1e-3` as a string; a user typing it on the command line means the number. Words such as
    `nan` or `inf` stay text (float() would read them)."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return float(value)
    return value


def _resolve_run_config_path(name_or_path: str, relative_to: Path | None = None) -> Path:
    """A packaged level's default run config by level name, or a run YAML file (relative to `relative_to`)."""
    return resolve_yaml_path(name_or_path, relative_to, run_config_path, "run config")


def level_file_defaults(path: Path | str) -> str | None:
    """For a level YAML file (its own fields are all level fields, e.g. `name`, `grid_size`, `affordances`),
    the packaged level whose default run config trains it: the nearest packaged level its `extends:` chain
    reaches, else by its rules (L1_full for a full view, L3_temporal with a clock, L2_partial otherwise).
    None for anything else (a run YAML, or a file holding only `extends:`)."""
    path = Path(path)
    if not path.is_file():
        return None
    level_fields, own = set(LevelConfig.model_fields), read_yaml(path)
    keys = set(own) - {"extends"}
    if not keys or not keys <= level_fields:
        return None
    current, parent = path, own.get("extends")
    for _ in range(MAX_EXTENDS):
        if not isinstance(parent, str):
            break
        if parent in LEVEL_NAMES:
            return parent
        current = resolve_yaml_path(parent, current.parent, level_path, "level")
        parent = read_yaml(current).get("extends")
    level = load_level(path)
    if level.observation.view == "full":
        return "L1_full"
    return "L3_temporal" if level.temporal is not None else "L2_partial"


def load_run_config(
    level_or_path: str | Path, overrides: dict[str, Any] | None = None, source_note: str = ""
) -> RunConfig:
    """The default run config of a packaged level, or a run YAML file, with overrides applied on top. Either
    may start with `extends: NAME_OR_PATH` (another level's default run config, or a run file) and override
    only what it changes. A level YAML file is trained with the default run config `level_file_defaults`
    picks, its `level:` that file."""
    text = str(level_or_path)
    path = _resolve_run_config_path(text)
    base = None if text in LEVEL_NAMES else level_file_defaults(path)
    if base is not None:
        data = {**read_extended_yaml(run_config_path(base), _resolve_run_config_path), "level": text}
        source = f"{run_config_path(base)} (the default run config of {base}, for the level file {text})"
    else:
        data = read_extended_yaml(path, _resolve_run_config_path) if path.exists() else {}
        if text in LEVEL_NAMES:
            data.setdefault("level", text)
        source = str(path)
    if overrides:
        data = deep_merge(data, overrides)
    return load_run_config_data(data, f"{source}{' with ' + source_note if source_note else ''}")


def load_run_config_data(data: dict[str, Any], source: str) -> RunConfig:
    """Validate a run config mapping; errors name `source`, the field and what is allowed."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(source, e, RunConfig)) from None
