"""The recipes `tuneforge train` dispatches on, by the config's `recipe:` value."""

from tuneforge.recipes.agent import Agent
from tuneforge.recipes.base import Recipe
from tuneforge.recipes.calibration import Calibration
from tuneforge.recipes.long_context import LongContext
from tuneforge.recipes.preference import Preference
from tuneforge.recipes.reward import Reward
from tuneforge.recipes.rl import RL
from tuneforge.recipes.sft import SFT

RECIPES: dict[str, Recipe] = {r.name: r for r in (SFT(), Preference(), Reward(), RL(), Agent(), Calibration(),
                                              LongContext())}
