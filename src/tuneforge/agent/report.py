"""Put an evaluated agent run's results into a markdown document (docs/agent.md for `make agent-demo`).

The results (agent.md of the run: every metric with its interval, paired differences, McNemar's
tests, errors by role) replace what stands between two marker lines of the document, under a line
that says when, on what machine and with what command they were measured; the charts are copied
next to the document. Everything else in the document is left as it is.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shutil
from pathlib import Path

from tuneforge.atomic import atomic_write_text
from tuneforge.errors import UserError
from tuneforge.run_dir import RunDir

BEGIN = "<!-- agent results: begin (written by `tuneforge agent report`; edits between the markers are replaced) -->"
END = "<!-- agent results: end -->"


def machine() -> str:
    """CPU model, cores and the bf16 units, or the GPU: the line every measured table carries."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    name, flags = platform.processor() or "unknown CPU", ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        name = re.search(r"^model name\s*:\s*(.+)$", info, re.M).group(1).strip()
        flags = re.search(r"^flags\s*:\s*(.+)$", info, re.M).group(1)
    except (OSError, AttributeError):
        pass
    units = [u for u in ("amx_bf16", "avx512_bf16") if f" {u}" in f" {flags}"] or ["no bf16 units: fp32"]
    return f"{name}, {os.cpu_count()} cores ({', '.join(units)}), torch {torch.__version__}"


def _shift_headings(text: str, levels: int) -> str:
    return re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + levels) + " ", text, flags=re.M)


def publish(run: Path, doc: Path, images: Path, command: str, wall_seconds: float | None = None) -> Path:
    """Replace the results block of `doc` with the run's results; charts go to `images`."""
    files = RunDir(run)
    if not files.agent_md.is_file():
        raise UserError(f"{files.agent_md} is missing: evaluate the run first (`tuneforge agent eval {run} ...`)")
    if not doc.is_file():
        raise UserError(f"{doc} does not exist: give the markdown file to write the results into")
    text = doc.read_text(encoding="utf-8")
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise UserError(f"{doc}: needs one line '{BEGIN}' and, after it, one line '{END}' to write between")
    body = files.agent_md.read_text(encoding="utf-8")
    body = body.split("\n", 1)[1] if body.startswith("# ") else body  # the run's own title
    images.mkdir(parents=True, exist_ok=True)
    for png in sorted(files.plots.glob("agent-*.png")):
        target = images / f"{run.name}-{png.name}"
        shutil.copyfile(png, target)
        body = body.replace(f"(plots/{png.name})", f"({os.path.relpath(target, doc.parent)})")
    layout = json.loads(files.agent_json.read_text())
    sizes = ", ".join(f"{k} {v:,} tokens" for k, v in (layout.get("tokens") or {}).items())
    took = f"; {wall_seconds / 60:.0f} min in all" if wall_seconds else ""
    head = (f"Measured {datetime.date.today().isoformat()} on {machine()}: `{command}`{took}. "
            f"Training: {sizes}.")
    block = f"{BEGIN}\n\n{head}\n\n{_shift_headings(body.strip(), 1)}\n\n{END}"
    start, end = text.index(BEGIN), text.index(END) + len(END)
    atomic_write_text(doc, text[:start] + block + text[end:])
    return doc
