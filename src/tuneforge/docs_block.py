"""Measured results written into a markdown document between two marker lines, so a demo's command
can keep its page true (`tuneforge runs report`): everything
outside the markers is left as it is, and the block says when, on what machine and by which command
the numbers were measured."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shutil
from pathlib import Path

from tuneforge.atomic import atomic_write_text
from tuneforge.errors import UserError


def markers(name: str) -> tuple[str, str]:
    return (f"<!-- {name} results: begin (written by tuneforge; edits between the markers are replaced) -->",
            f"<!-- {name} results: end -->")


def machine() -> str:
    """CPU model, cores and its bf16 units, or the GPU: the line every measured table carries."""
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


def shift_headings(text: str, levels: int) -> str:
    return re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + levels) + " ", text, flags=re.M)


def copy_images(body: str, images: list[Path], prefix: str, folder: Path, doc: Path) -> str:
    """Copy each image to `folder` as PREFIX-NAME and point the body's `(plots/NAME)` links at it."""
    folder.mkdir(parents=True, exist_ok=True)
    for png in images:
        target = folder / f"{prefix}-{png.name}"
        shutil.copyfile(png, target)
        body = body.replace(f"(plots/{png.name})", f"({os.path.relpath(target, doc.parent)})")
    return body


def write_block(doc: Path, name: str, body: str, command: str, wall_seconds: float | None = None,
                note: str = "") -> Path:
    """Replace the `name` block of `doc` with a dated, machine-stamped header and `body`."""
    begin, end = markers(name)
    if not doc.is_file():
        raise UserError(f"{doc} does not exist: give the markdown file to write the results into")
    text = doc.read_text(encoding="utf-8")
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise UserError(f"{doc}: needs one line '{begin}' and, after it, one line '{end}' to write between")
    took = f"; {wall_seconds / 60:.0f} min in all" if wall_seconds else ""
    head = f"Measured {datetime.date.today().isoformat()} on {machine()}: `{command}`{took}.{' ' + note if note else ''}"
    block = f"{begin}\n\n{head}\n\n{body.strip()}\n\n{end}"
    start, stop = text.index(begin), text.index(end) + len(end)
    atomic_write_text(doc, text[:start] + block + text[stop:])
    return doc
