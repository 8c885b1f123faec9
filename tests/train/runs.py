"""Tiny training runs that the report and watch tests read back."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from townlet.train import Trainer, load_run_config
from townlet.train.watch import few_threads


def make_run(path: Path, steps: int = 2000, seed: int = 5, capacity: int = 4000, **extra: object) -> Path:
    """`steps` agent-steps of L0_minimal with 16 agents: episodes, learner rows, one final checkpoint."""
    overrides = {
        "steps": steps, "agents": 16, "seed": seed,
        "learner": {"learning_starts": 1000, "batch_size": 32},
        "replay": {"capacity": capacity},
        "logging": {"interval_steps": 1000, "checkpoint_every": 10**9, "tensorboard": False, "save_replay": False},
        **extra,
    }
    with few_threads("cpu"):
        Trainer(load_run_config("L0_minimal", overrides), path).run()
    return path


class FullDisk:
    """A file on a disk that fills up after `room` bytes: the next write fails as the kernel's would."""

    def __init__(self, file, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data) -> int:
        if len(data) > self.room:
            self.file.write(bytes(data)[: self.room])
            self.out_of_room()
        self.room -= len(data)
        return self.file.write(data)

    def out_of_room(self) -> None:
        self.room = 0
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self) -> None:
        self.file.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


class Payload:
    """What a malicious checkpoint could hold: unpickling it would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)
