"""User mistakes through the CLI: each fails with exit code 2 and one clear `error:` line that names
the file, line, key or flag involved, and leaves no half-written run directory behind.

The mistakes themselves are one table in test_bad_input_table.py; this file keeps the longer story of an
existing run directory: refused untouched, then overwritten by a run that trains."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli, write_config, write_jsonl

ALPACA = [{"instruction": f"Say {w}", "input": "", "output": w} for w in
          ("yes", "no", "maybe", "true", "false", "answer")]
TINY_RUN = {"train": {"max_steps": 1, "batch_tokens": 256, "precision": "fp32"},
            "eval": {"before_after": False}}


def _cfg(t: Path, model: Path, data_file: Path, **sections) -> Path:
    merged = {k: dict(v) for k, v in TINY_RUN.items()}
    for k, v in sections.items():
        if isinstance(v, dict) and k in merged:
            merged[k].update(v)
        else:
            merged[k] = v
    return write_config(t / "cfg.yaml", model, data_file, t / "run", **merged)


def _assert_one_error_line(err: str, expected: list[str]) -> str:
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    line = lines[0]
    assert line.startswith("error: "), line
    assert "Traceback" not in err
    for part in expected:
        assert part in line, f"{part!r} not in {line!r}"
    return line


def test_existing_run_dir_is_refused_untouched_then_overwritten(tiny_llama, tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", ALPACA)
    cfg = _cfg(tmp_path, tiny_llama, data)
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")

    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 2, err
    _assert_one_error_line(err, [str(run), "already exists", "--overwrite", "--resume"])
    assert sorted(p.name for p in run.iterdir()) == ["precious.txt"]
    assert (run / "precious.txt").read_text() == "keep me"

    # A bad config with --overwrite must not wipe the existing directory either.
    data_bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "x", "output": 5}])
    bad_cfg = write_config(tmp_path / "bad.yaml", tiny_llama, data_bad, run, **TINY_RUN)
    code, out, err = run_cli(["train", bad_cfg, "--overwrite"], capsys)
    assert code == 2
    _assert_one_error_line(err, [f"{data_bad}:1"])
    assert (run / "precious.txt").read_text() == "keep me"

    code, out, err = run_cli(["train", cfg, "--overwrite"], capsys)
    assert code == 0, err
    assert not (run / "precious.txt").exists()
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert (run / "config.yaml").is_file()

    # And the finished run can now be resumed-refused cleanly only if it has no checkpoint;
    # overwrite+resume stays an error that touches nothing.
    code, out, err = run_cli(["train", cfg, "--overwrite", "--resume"], capsys)
    assert code == 2
    _assert_one_error_line(err, ["--overwrite", "--resume"])
    assert (run / "adapter" / "adapter_config.json").is_file()
