"""Put an evaluated agent run's results into a markdown document (docs/agent.md for `make agent-demo`).

The results (agent.md of the run: every metric with its interval, paired differences, McNemar's
tests, errors by role) replace the document's agent results block (docs_block.py), and the charts
are copied next to the document.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.docs_block import copy_images, shift_headings, write_block
from tuneforge.errors import UserError
from tuneforge.run_dir import RunDir


def publish(run: Path, doc: Path, images: Path, command: str, wall_seconds: float | None = None) -> Path:
    """Replace the agent results block of `doc` with the run's results; charts go to `images`."""
    files = RunDir(run)
    if not files.agent_md.is_file():
        raise UserError(f"{files.agent_md} is missing: evaluate the run first (`tuneforge agent eval {run} ...`)")
    body = files.agent_md.read_text(encoding="utf-8")
    body = body.split("\n", 1)[1] if body.startswith("# ") else body  # the run's own title
    body = copy_images(body, sorted(files.plots.glob("agent-*.png")), run.name, images, doc)
    layout = json.loads(files.agent_json.read_text())
    return write_block(doc, "agent", shift_headings(body, 1), command, wall_seconds,
                       f"Training: {training_sizes(layout)}.")


def training_sizes(layout: dict) -> str:
    """Tokens per stage, and where a stage stopped early, what it was offered and which step it kept."""
    steps, offered, best = (layout.get(k) or {} for k in ("steps", "offered_steps", "best_step"))
    parts = []
    for stage, tokens in (layout.get("tokens") or {}).items():
        part = f"{stage} {tokens:,} tokens"
        if stage in offered:
            part += (f" (offered {offered[stage]} steps, stopped early at step {steps.get(stage)}: no better "
                     f"validation loss after step {best.get(stage)}, whose weights it keeps)")
        parts.append(part)
    return ", ".join(parts)
