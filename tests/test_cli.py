"""CLI commands a user runs after training: models tiny, generate, chat; loss-metric evaluation; early stopping."""

import io
import json

from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import run_cli, write_config


def test_models_tiny_writes_loadable_model(tmp_path, capsys):
    for arch in ("llama", "qwen2", "gpt2"):
        code, out, err = run_cli(["models", "tiny", tmp_path / arch, "--arch", arch], capsys)
        assert code == 0, err
        AutoModelForCausalLM.from_pretrained(tmp_path / arch)
        assert AutoTokenizer.from_pretrained(tmp_path / arch).chat_template
    code, _, err = run_cli(["models", "tiny", tmp_path / "x", "--arch", "bert"], capsys)
    assert code == 2 and "--arch" in err


def test_loss_metric_chat_and_generate(tiny_llama, dates_data, tmp_path, capsys, monkeypatch):
    train, val = dates_data
    cfg = write_config(tmp_path / "c.yaml", tiny_llama, train, tmp_path / "run", val,
                       eval={"metric": "loss"}, train={"max_steps": 2})
    code, _, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    ev = json.loads((tmp_path / "run" / "report.json").read_text())["evaluation"]
    assert ev["metric"] == "loss" and ev["after"] < ev["before"]  # lr 1e-3 on a tiny model: loss drops

    monkeypatch.setattr("sys.stdin", io.StringIO("hello there\n/reset\nsecond question\n/exit\n"))
    code, out, err = run_cli(["chat", tmp_path / "run", "--max-new-tokens", "3"], capsys)
    assert code == 0, err
    assert out.count("model> ") == 2

    code, out, err = run_cli(["generate", tmp_path / "run", "hi", "--max-new-tokens", "3"], capsys)
    assert code == 0, err


def test_early_stopping_restores_best(tiny_llama, dates_data, tmp_path, capsys):
    train, val = dates_data
    # A learning rate this large makes validation loss rise quickly: early stopping must trigger.
    cfg = write_config(tmp_path / "c.yaml", tiny_llama, train, tmp_path / "run", val,
                       train={"max_steps": 30, "lr": 0.5, "eval_every": 1, "early_stopping_patience": 2,
                              "warmup_ratio": 0.0, "max_grad_norm": None},
                       eval={"before_after": False})
    code, _, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["stopped_early"] and report["steps"] < 30
    vals = [json.loads(line)["val_loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
            if "val_loss" in line]
    assert report["best_val_loss"] == round(min(vals), 4)


def test_serve_reads_the_api_key_from_the_environment(monkeypatch, capsys):
    """The environment is read at the CLI edge only; the server gets the key as an argument."""
    import tuneforge.serve.app as serve_app
    from tuneforge.serve.auth import API_KEY_ENV

    seen = {}
    monkeypatch.setattr(serve_app, "serve", lambda *a, **k: seen.update(k))
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    code, out, err = run_cli(["serve", "--host", "0.0.0.0"], capsys)
    assert code == 0 and seen["api_key"] == "from-env", err


def test_command_line_mistakes_are_one_error_line_not_a_traceback(capsys):
    # typer 0.2x raises the exceptions of the click copy it carries, not click's own: both must be caught.
    for args, said in ((["train", "--bogus"], "No such option: --bogus"), (["chekc"], "No such command 'chekc'"),
                       (["train"], "Missing argument 'config'")):
        code, out, err = run_cli(args, capsys)
        assert code == 2, (args, err)
        assert f"Error: {said}" in err and "Traceback" not in err + out, (args, err)
