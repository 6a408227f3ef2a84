"""The offline tool world: deterministic tools over shipped tables, and seeded tasks with gold
trajectories in three splits (train, test_id, test_ood). See :mod:`.world` and :mod:`.tasks`."""

from tuneforge.agent.env.distractors import NEAR_DUPLICATES, near_duplicates, offered_tools
from tuneforge.agent.env.tasks import (
    DISTRACTORS, EXTRA_TOOLS, GIVE_UP_FRACTION, HELD_OUT_TOOLS, LONG_SHARE, SPLITS, TEMPLATES, TRAIN_TOOLS,
    answers_match, generate_tasks, normalize_answer, numbers_in, read_tasks, trajectory_from_dict,
    trajectory_to_dict, write_world,
)
from tuneforge.agent.env.ood_templates import OOD_TEMPLATES
from tuneforge.agent.env.recording import Template
from tuneforge.agent.env.templates import GIVE_UP_TEMPLATES, TRAIN_TEMPLATES
from tuneforge.agent.env.world import WORLD_TOOLS, world_registry, world_tools

__all__ = [
    "DISTRACTORS", "EXTRA_TOOLS", "GIVE_UP_FRACTION", "GIVE_UP_TEMPLATES", "HELD_OUT_TOOLS", "LONG_SHARE",
    "NEAR_DUPLICATES", "OOD_TEMPLATES", "SPLITS", "TEMPLATES", "TRAIN_TEMPLATES", "TRAIN_TOOLS", "Template",
    "WORLD_TOOLS", "answers_match", "generate_tasks", "near_duplicates", "normalize_answer", "numbers_in",
    "offered_tools", "read_tasks", "trajectory_from_dict", "trajectory_to_dict", "world_registry", "world_tools",
    "write_world",
]
