"""The Recipe protocol and the registry the CLI dispatches on.

A recipe says which data, which loss and which evaluation; the Session (train/session.py) owns the
set-up and THE loop. Adding a recipe is one module implementing this protocol and one line in
RECIPES (recipes/__init__.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from tuneforge.config import Config
from tuneforge.errors import UserError
from tuneforge.models.load import LoadPolicy
from tuneforge.models.methods import check_serves
from tuneforge.run_dir import RunDir
from tuneforge.train.session import Session


class Recipe(Protocol):
    name: str  # the config's `recipe:` value
    resumable: bool  # does `tuneforge train --resume` continue it?
    resume_hint: str  # what to do instead when it does not

    def check(self, cfg: Config) -> None:
        """Refuse, before anything loads, what this recipe cannot do with `cfg` (one clear line)."""

    def session(self, cfg: Config, *, overwrite: bool, resume: bool, policy: LoadPolicy) -> Session:
        """The run's Session; the run folder is checked here, before anything loads."""

    def run(self, session: Session) -> Path:
        """Read the data, train through the session, evaluate, report; returns the run folder."""

    def outputs(self, run: Path) -> dict[str, Path]:
        """What the CLI points the user at when the run is done (label -> path)."""


class RecipeBase:
    """Defaults for the protocol: resumable, nothing extra to check, a plain Session."""

    resumable = True
    resume_hint = ""

    def check(self, cfg: Config) -> None:
        pass

    def session(self, cfg: Config, *, overwrite: bool, resume: bool, policy: LoadPolicy) -> Session:
        return Session(cfg, overwrite=overwrite, resume=resume, policy=policy)

    def outputs(self, run: Path) -> dict[str, Path]:
        return {"report": RunDir(run).report_md}


def check_recipe(recipe: Recipe, cfg: Config, resume: bool) -> None:
    """The checks every recipe shares, then its own."""
    check_serves(cfg.method.name, recipe.name)
    if resume and not recipe.resumable:
        raise UserError(f"--resume is not supported with recipe: {recipe.name}; {recipe.resume_hint}")
    recipe.check(cfg)
