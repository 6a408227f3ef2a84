"""The offline tool world: deterministic tools over shipped tables, and seeded tasks with gold
trajectories in three splits (train, test_id, test_ood). See :mod:`.world` and :mod:`.tasks`."""

from tuneforge.agent.env.tasks import (
    GIVE_UP_FRACTION, GIVE_UP_TEMPLATES, HELD_OUT_TOOLS, OOD_TEMPLATES, SPLITS, TEMPLATES, TRAIN_TEMPLATES,
    TRAIN_TOOLS, Template, answers_match, generate_tasks, normalize_answer, numbers_in, read_tasks,
    trajectory_from_dict, trajectory_to_dict, write_world,
)
from tuneforge.agent.env.world import WORLD_TOOLS, world_registry, world_tools

__all__ = [
    "GIVE_UP_FRACTION", "GIVE_UP_TEMPLATES", "HELD_OUT_TOOLS", "OOD_TEMPLATES", "SPLITS", "TEMPLATES",
    "TRAIN_TEMPLATES", "TRAIN_TOOLS", "Template", "WORLD_TOOLS", "answers_match", "generate_tasks",
    "normalize_answer", "numbers_in", "read_tasks", "trajectory_from_dict", "trajectory_to_dict",
    "world_registry", "world_tools", "write_world",
]
