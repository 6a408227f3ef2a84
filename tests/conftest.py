import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tuneforge's cache (encoded data, converted models) goes to a folder of this test session, never the user's
os.environ["TUNEFORGE_HOME"] = tempfile.mkdtemp(prefix="tuneforge-test-home-")

from tuneforge.models.tiny import build_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny_model(root / arch, arch, seed=0) for arch in ("llama", "qwen2", "gpt2")}


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> Path:
    return tiny_models["llama"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def dates_data(tmp_path_factory) -> tuple[Path, Path]:
    from tuneforge.data.demo_tasks import write_dates_dataset

    return write_dates_dataset(tmp_path_factory.mktemp("dates"), n_train=96, n_val=16, seed=0)


def write_config(path: Path, model: Path, train_file: Path, out: Path, val: Path | None = None, **sections) -> Path:
    import yaml

    cfg = {"model": str(model), "output_dir": str(out), "data": {"train": str(train_file)},
           "train": {"max_steps": 4, "batch_tokens": 512, "lr": 1e-3, "precision": "fp32"},
           "eval": {"max_examples": 4, "max_new_tokens": 8}}
    if val:
        cfg["data"]["validation"] = str(val)
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(cfg.get(section), dict):
            cfg[section].update(values)
        else:
            cfg[section] = values
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in-process (fast: no new interpreter); returns (exit code, stdout, stderr)."""
    from tuneforge.cli import main

    old = sys.argv
    sys.argv = ["tuneforge", *map(str, args)]
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return code, captured.out, captured.err


class NoCapture:
    """For run_cli where capsys cannot be had (module fixtures): output goes to the terminal."""

    def readouterr(self):
        from types import SimpleNamespace

        return SimpleNamespace(out="", err="")


def report_into_doc(run: Path, name: str, tmp_path: Path, capsys, command: str) -> str:
    """`tuneforge runs report` into a fresh doc holding the `name` results markers; returns the doc's text."""
    from tuneforge.docs_block import markers

    doc = tmp_path / "doc.md"
    begin, end = markers(name)
    doc.write_text(f"# Doc\n{begin}\nold numbers\n{end}\nafter\n")
    code, out, err = run_cli(["runs", "report", run, "--into", doc, "--images", tmp_path / "img",
                              "--command", command], capsys)
    assert code == 0, err
    text = doc.read_text()
    assert "old numbers" not in text and f"`{command}`" in text and text.endswith(f"{end}\nafter\n")
    return text


def running_server(app):
    """Serve a FastAPI app with uvicorn on a free loopback port in a thread; yields the base URL."""
    from tuneforge.serve.background import serve_in_thread

    return serve_in_thread(app)


def shared_toolbench() -> Path | None:
    """The shared ToolBench data: $TUNEFORGE_SHARED_TOOLBENCH, ../shared next to the checkout, or /work/shared."""
    candidates = [os.environ.get("TUNEFORGE_SHARED_TOOLBENCH"),
                  Path(__file__).resolve().parents[2] / "shared" / "data" / "toolbench",
                  "/work/shared/data/toolbench"]
    for c in candidates:
        if c and (Path(c) / "out_of_domain.json").is_file():
            return Path(c)
    return None
