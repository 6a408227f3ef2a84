"""The whole loop on a tiny model: train -> eval -> serve -> feedback -> DPO -> eval -> promotion gate."""

import json

import pytest
import yaml

from conftest import run_cli, running_server, write_config

openai = pytest.importorskip("openai")


def test_train_eval_serve_feedback_dpo_eval_gate(tmp_path, tiny_llama, dates_data, capsys, monkeypatch):
    train_file, val_file = dates_data
    # 1. train (SFT)
    sft_cfg = write_config(tmp_path / "sft.yaml", tiny_llama, train_file, tmp_path / "sft", val=val_file,
                           eval={"before_after": False})
    code, _, err = run_cli(["train", sft_cfg], capsys)
    assert code == 0, err

    # 2. eval the base and the run side by side
    eval_cfg = tmp_path / "eval.yaml"
    eval_cfg.write_text(yaml.safe_dump({"output_dir": str(tmp_path), "suites": [
        {"name": "dates", "kind": "generate", "data": str(val_file), "template": "{instruction}\n\n{input}",
         "target_field": "output", "max_examples": 4, "max_new_tokens": 6, "metric": "token_f1"}]}))
    code, out, err = run_cli(["eval", eval_cfg, "--model", f"base={tiny_llama}", "--model",
                              f"sft={tmp_path / 'sft'}"], capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert {"base", "sft"} <= set(results["results"])

    # 3. serve the run's adapter; 4. users send requests and feedback
    from tuneforge.serve.app import create_app
    from tuneforge.serve.models import ServedModels

    serve_dir = tmp_path / "serve"
    models = ServedModels(str(tiny_llama), {"dates": tmp_path / "sft" / "adapter"}, device="cpu")
    with running_server(create_app(models, serve_dir)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        import urllib.request

        for record in [json.loads(line) for line in val_file.read_text().splitlines()[:4]]:
            reply = client.chat.completions.create(
                model="dates", max_tokens=6, temperature=0,
                messages=[{"role": "user", "content": f"{record['instruction']}\n\n{record['input']}"}])
            # a user correcting the answer (a random tiny model may say nothing: then they name a bad one)
            feedback = {"completion_id": reply.id, "preferred": record["output"]}
            if not reply.choices[0].message.content.strip():
                feedback["rejected"] = "I do not know."
            body = json.dumps(feedback).encode()
            req = urllib.request.Request(f"{url}/v1/feedback", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                assert r.status == 200

    # 5. feedback -> preference pairs -> DPO on top of the served model's adapter run
    pairs = tmp_path / "pairs.jsonl"
    code, out, err = run_cli(["feedback", "export", pairs, "--serve-dir", serve_dir], capsys)
    assert code == 0, err
    assert len(pairs.read_text().splitlines()) >= 1
    dpo_cfg = write_config(tmp_path / "dpo.yaml", tiny_llama, pairs, tmp_path / "dpo", recipe="preference",
                           data={"val_ratio": 0.0}, train={"max_steps": 2, "lr": 1e-3})
    code, _, err = run_cli(["train", dpo_cfg], capsys)
    assert code == 0, err
    assert (tmp_path / "dpo" / "adapter").is_dir()

    # 6. eval again with a promotion gate: a generous tolerance passes; a regression exits with code 1
    gate = ["eval", eval_cfg, "--model", f"dpo={tmp_path / 'dpo'}", "--baseline", f"sft={tmp_path / 'sft'}",
            "--out", tmp_path / "gate", "--fail-if-worse", "dates/token_f1:1.0"]
    code, out, _ = run_cli(gate, capsys)
    assert code == 0 and "gate passed" in out
    import tuneforge.eval.runner as runner

    monkeypatch.setattr(runner, "gate", lambda *a, **k: ["dates/token_f1: 0.10 < baseline 0.50 - 0.01"])
    code, out, _ = run_cli(gate, capsys)
    assert code == 1 and "FAILED" in out
