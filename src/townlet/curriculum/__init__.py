"""Curricula: per-agent difficulty stages (depletion, reward mode) applied to the world."""

from townlet.curriculum.stages import (
    DEFAULT_STAGES,
    AdversarialCurriculum,
    Curriculum,
    Stage,
    StaticCurriculum,
)

__all__ = ["DEFAULT_STAGES", "AdversarialCurriculum", "Curriculum", "Stage", "StaticCurriculum"]
