"""The launch form's config check: YAML text -> the config schema's verdict, the same checks as `train`,
one {"key", "message"} per problem."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from tuneforge.config import Config, describe_error, require_data
from tuneforge.errors import UserError
from tuneforge.ui.http import RUN_NAME


def parse_yaml(text) -> tuple[object, list[dict]]:
    if not isinstance(text, str):
        return None, [{"key": "(yaml)", "message": "yaml: the config text is missing"}]
    try:
        return yaml.safe_load(text) or {}, []
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        return None, [{"key": "(yaml)", "message": f"not valid YAML{where}: {getattr(e, 'problem', e)}"}]


def config_errors(raw, name: str | None, runs_dir: Path) -> list[dict]:
    if not isinstance(raw, dict):
        return [{"key": "(top level)", "message": "the top level must be a mapping of keys (model:, data:, train:, ...)"}]
    errors = []
    if name is not None and not RUN_NAME.match(name):
        errors.append({"key": "name", "message": "run name: letters, digits, '_', '-', '.' (no slashes)"})
    raw = {**raw, "output_dir": str(runs_dir / (name or "run"))}
    try:
        cfg = require_data(Config.model_validate(raw))
        # The recipes load torch and transformers: imported when a config is checked, not at start-up.
        from tuneforge.recipes import RECIPES
        from tuneforge.recipes.base import check_recipe

        check_recipe(RECIPES[cfg.recipe], cfg, resume=False)
    except ValidationError as e:
        for err in e.errors():
            text = describe_error(err, raw)
            key, _, msg = text.partition(": ")
            errors.append({"key": key if msg and " " not in key else "(config)", "message": text})
    except UserError as e:
        text = str(e).removeprefix("config: ")
        key = text.partition(":")[0]
        errors.append({"key": key if key in ("method", "preference.reference", "calibration.regularizer") else "data",
                       "message": text})
    return errors


def check(text, name: str | None, runs_dir: Path) -> tuple[object, list[dict]]:
    """The parsed config and its problems (YAML first, then the schema)."""
    raw, errors = parse_yaml(text)
    return raw, errors or config_errors(raw, name, runs_dir)
