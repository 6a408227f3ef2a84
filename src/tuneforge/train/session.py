"""The set-up every recipe on the loop shares, written once.

A recipe says which data, which loss and which evaluation; a Session does the rest, in the order a
run needs it:

    session = Session(cfg, overwrite=..., resume=...)   # seed, threads; the run folder checked, not made
    session.load_model()                                # model + tokenizer + chat template
    ... the recipe reads and encodes its data, refusing bad data before anything is written ...
    session.start()                                     # run folder made, config.yaml written
    session.prepare(train)                              # device, precision, attention kernel
    before = session.evaluate_once(score, "scoring...") # cached in eval_before.json for --resume
    result = session.fit(train, val, loss=DPOLoss...)   # method applied, compiled, trackers opened, THE loop
    session.save_artifact()                             # the method's own folder format, atomically
    session.finish(session.summary(result) | {...})     # report.json / report.md / plots/loss.png, to the trackers

Stages of one recipe (the agent's backbone and roles) each get their own Session on a sub-folder.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Callable

import torch
from accelerate.utils import set_seed

from tuneforge.atomic import atomic_dir, atomic_write_text, write_json
from tuneforge.config import Config, dump_config
from tuneforge.data.pack import is_online, lengths_of
from tuneforge.data.render import Encoded, setup_chat_template
from tuneforge.models.load import SAFE, LoadPolicy, load_model_and_tokenizer
from tuneforge.models.methods import METHODS, apply_method, count_parameters
from tuneforge.models.quantize import check_backend, is_quantized, quantized_load_args, set_compute_dtype
from tuneforge.report import plot_loss, write_report
from tuneforge.run_dir import ADAPTER, MODEL, RunDir
from tuneforge.runs import check_run_dir, create_run_dir
from tuneforge.train.distributed import launcher_rank, make_accelerator, parallel_strategy
from tuneforge.train.estimate import memory_line
from tuneforge.train.levers import choose_attention, compile_blocks, compile_choice, peak_memory_gb
from tuneforge.train.loop import LoopResult, planned_steps, train_loop
from tuneforge.model_card import write_card
from tuneforge.train.trackers import Trackers, check_installed, open_trackers
from tuneforge.train.precision import cpu_has_fast_bf16, machine_line, resolve_precision


def say(msg: str) -> None:
    print(f"[tuneforge] {msg}", flush=True)


def resolved_config(cfg: Config, log=say) -> Config:
    """The config that actually runs: a copy with the adjustments a method forces, said out loud.
    It is what config.yaml records, so a rerun from it runs the same."""
    out = cfg.model_copy(deep=True)
    if METHODS[cfg.method.name].virtual_tokens and cfg.train.packing:
        log(f"packing off for method {cfg.method.name}: its virtual tokens go in front of each example")
        out.train.packing = False
    return out


class Session:
    def __init__(self, cfg: Config, *, overwrite: bool = False, resume: bool = False, run: Path | None = None,
                 policy: LoadPolicy = SAFE, log: Callable[[str], None] = say, observe=None,
                 check_run: bool = True):
        self.started = time.time()
        self.cfg = resolved_config(cfg, log)
        self.overwrite, self.resume, self.policy, self.log, self.observe = overwrite, resume, policy, log, observe
        if self.cfg.train.threads:
            torch.set_num_threads(self.cfg.train.threads)
        set_seed(self.cfg.seed)
        check_installed(self.cfg.train.report_to)  # a missing tracker is refused before anything loads
        # Refused before any loading: a run folder in the way costs the user nothing. A later stage of a
        # staged recipe works in an existing folder, and says so with check_run=False.
        target = Path(run or self.cfg.output_dir)
        # Rank 0 only checks (see launcher_rank); its refusal stops the whole group.
        self.run = check_run_dir(target, overwrite, resume) if check_run and launcher_rank() == 0 else target
        self.model = self.tokenizer = self.model_path = None
        self.accelerator = self.device = self.amp = None
        self.loss = None  # the loss module `fit` trained with (the recipe may evaluate with it)
        self.trainable = self.total = 0
        self.artifact: Path | None = None
        self.trackers: Trackers | None = None  # open from fit to finish (or release), main process only

    # ------------------------------------------------------------------ set-up

    def stage(self, cfg: Config, name: str) -> "Session":
        """A Session for one stage of this run, in its own sub-folder, with this run's switches."""
        return Session(cfg, run=self.run / name, policy=self.policy, log=self.log, observe=self.observe)

    def load_model(self, name: str | None = None, *, training: bool = True) -> None:
        """The model (with the config's dropout when it will train), its tokenizer and chat template."""
        source = name if name is not None else self.cfg.model
        dropout = self.cfg.train.dropout if training else None
        # The config's rope_scaling stretches the model this run trains or answers with (not another, e.g. a judge).
        rope = self.cfg.rope_scaling if training or name is None else None
        max_length = self.cfg.data.max_length if self.cfg.data and training else None
        quantization = self._quantization() if training else None
        self.model, self.tokenizer, self.model_path = load_model_and_tokenizer(
            source, dropout, policy=self.policy, rope_scaling=rope, max_length=max_length, quantization=quantization)
        setup_chat_template(self.tokenizer, self.cfg.data.chat_template if self.cfg.data else None, self.model_path)

    def _quantization(self) -> dict | None:
        """from_pretrained arguments for a quantized frozen base (method.quantize), its backend checked here."""
        kind = getattr(self.cfg.method, "quantize", "none")
        if kind == "none":
            return None
        self.log(check_backend(kind))
        return quantized_load_args(kind)

    def start(self, record_config: bool = True) -> Path:
        """Make the run folder and record the config. Called once model and data are known good, so a
        failed start leaves nothing behind. A stage inside a run does not record one: a folder with a
        config.yaml is a run of its own to `tuneforge runs`."""
        if launcher_rank() != 0:
            # Rank 0 alone checks, replaces and records the folder: another rank writing here first (it
            # may load faster) would make rank 0 refuse the folder, and its --overwrite would delete what
            # rank 0 wrote. Rank 0 has done all three before the process group's rendezvous lets it by.
            self.run.mkdir(parents=True, exist_ok=True)
            return self.run
        create_run_dir(self.run, self.overwrite, self.resume)
        if record_config:
            atomic_write_text(RunDir(self.run).config, dump_config(self.cfg))
        return self.run

    @property
    def is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    def prepare(self, train: list[Encoded]) -> None:
        """Accelerator, device and compute dtype; the model moved there with the attention kernel chosen."""
        cfg = self.cfg
        self.accelerator = make_accelerator(cfg.train)  # DDP, FSDP or DeepSpeed under a multi-process launcher
        self.device = self.accelerator.device
        self.amp = resolve_precision(cfg.train.precision, self.device)
        self.model.to(self.device)
        self.log(machine_line(self.device))
        longest = train.row_length if is_online(train) else max(lengths_of(train))
        attention = choose_attention(cfg.train.attention, self.device, longest)
        self.model.set_attn_implementation(attention)
        if self.amp is not None and METHODS[cfg.method.name].adapter and cfg.train.frozen_base_dtype == "auto":
            # The frozen base never gets an optimizer update, so it needs no fp32 master copy: storing it
            # in the compute dtype halves its memory and spares autocast a weight cast every forward.
            # A quantized base stays packed (it refuses a cast); its layers dequantize to the compute dtype.
            if is_quantized(self.model):
                set_compute_dtype(self.model, self.amp)
            else:
                self.model.to(self.amp)
        why_attention = (f"train.attention: {cfg.train.attention}" if cfg.train.attention != "auto" else
                         f"auto: eager on CPU for examples up to 256 tokens, else sdpa; longest {longest}")
        self.log(f"model: {self.model_path} on {self.device}, compute {'bf16 autocast' if self.amp else 'fp32'} "
                 f"(train.precision: {cfg.train.precision}), {attention} attention ({why_attention}), "
                 f"method {cfg.method.name}")
        self.log(memory_line(cfg, self.model, self.device, self.amp is not None, self.accelerator.num_processes,
                             parallel_strategy(cfg.train, self.accelerator), longest, train))

    def evaluate_once(self, evaluate: Callable[[], dict], what: str) -> dict | None:
        """The starting model's scores, computed once and kept in the run folder (a resumed run has
        trained weights in memory by then, so it must not score "before" again). Main process only."""
        if not self.is_main:
            return None
        path = RunDir(self.run).eval_before
        if path.is_file():
            return json.loads(path.read_text())
        self.log(what)
        scores = evaluate()
        write_json(path, scores)
        return scores

    # ------------------------------------------------------------------ training

    def fit(self, train: list[Encoded], val: list[Encoded],
            loss: Callable[[torch.nn.Module], torch.nn.Module] | None = None) -> LoopResult:
        """Apply the method, compile if it pays, and run THE loop with `loss(model)` (default: target
        cross-entropy). The loss module stays on `self.loss` for the recipe's evaluation."""
        cfg = self.cfg
        model = apply_method(self.model, cfg.method)
        if cfg.train.activation_checkpointing:
            # Non-reentrant checkpointing needs no input that requires grad, so it works under PEFT too.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.trainable, self.total = count_parameters(model)
        native_bf16 = self.amp is not None and (self.device.type == "cuda" or cpu_has_fast_bf16())
        compiling, why = compile_choice(cfg.train.compile, self.device, self.total,
                                        planned_steps(train, cfg.train, self.accelerator.num_processes),
                                        fast_bf16=native_bf16, budget_s=cfg.train.time_budget_s)
        self.log(f"compile {why}")
        if compiling:
            compile_blocks(model)
        self.model = model
        self.loss = loss(model) if loss else None
        self.trainable, self.total = count_parameters(model)  # a loss may train a module of its own (a reward head)
        self.log(f"trainable parameters: {self.trainable:,} of {self.total:,} "
                 f"({100 * self.trainable / self.total:.2f}%)")
        if self.is_main and cfg.train.report_to:
            self.trackers = open_trackers(cfg, self.run, resume=self.resume, log=self.log)
        try:
            return train_loop(model, train, val, cfg.train, run_dir=self.run, seed=cfg.seed,
                              pad_id=self.tokenizer.pad_token_id, accelerator=self.accelerator, amp_dtype=self.amp,
                              resume=self.resume, log=self.log, loss_model=self.loss, observe=self.observe,
                              on_record=self.trackers.record if self.trackers else None)
        except BaseException as e:  # the trackers' runs end marked failed (or killed), then the error goes on
            if self.trackers:
                self.trackers.abort(e)
                self.trackers = None
            raise

    def save_artifact(self) -> Path:
        """The method's own folder (PEFT adapter, bottleneck adapter, or a whole HF model), with the
        tokenizer, written atomically."""
        method = METHODS[self.cfg.method.name]
        final = self.run / (ADAPTER if method.adapter else MODEL)
        with atomic_dir(final) as tmp:
            method.save(self.model, tmp)
            self.tokenizer.save_pretrained(tmp)
        self.artifact = final
        return final

    def release(self) -> None:
        """Free the model, optimizer state and the accelerator's references before the next stage loads
        its own model; otherwise every stage of a multi-stage recipe stays alive in memory."""
        self._close_trackers()  # a stage ends here, without finish
        if self.accelerator is not None:
            self.accelerator.free_memory()
        self.model = self.loss = None
        gc.collect()

    # ------------------------------------------------------------------ reporting

    def summary(self, result: LoopResult) -> dict:
        """The report fields every recipe on the loop shares."""
        out = {
            "model": self.model_path, "method": self.cfg.method.name, "trainable_params": self.trainable,
            "total_params": self.total, "steps": result.steps,
            "final_train_loss": round(result.train_loss, 4),
            "best_val_loss": round(result.best_val_loss, 4) if result.best_val_loss is not None else None,
            "stopped_early": result.stopped_early,
            "train_tokens_per_s": round(result.tokens / result.seconds, 1) if result.seconds else None,
            "peak_memory_gb": round(peak_memory_gb(self.device), 2),
        }
        if self.artifact is not None:
            out |= {"artifact": str(self.artifact),
                    "artifact_mb": round(sum(f.stat().st_size for f in self.artifact.rglob("*.safetensors"))
                                         / 2**20, 4)}
        return out

    def _close_trackers(self) -> None:
        """The report and plots (those written) to the trackers, then close them."""
        if self.trackers is not None:
            self.trackers.finish(self.run)
            self.trackers = None

    def finish(self, summary: dict, write=write_report) -> Path:
        """Wall time, the loss plot and the report (main process), then every process meets here."""
        if self.is_main:
            summary["wall_time_s"] = round(time.time() - self.started, 1)
            plot_loss(self.run)
            write(self.run, summary)
            if self.artifact is not None:  # the card needs the results, known only now
                write_card(self.artifact, self.cfg, summary, self.run, METHODS[self.cfg.method.name].adapter)
            self._close_trackers()
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
        return self.run
