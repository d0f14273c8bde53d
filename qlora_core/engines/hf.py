"""The trainer engines: transformers' `Trainer` and TRL's `SFTTrainer`, set up as the lesson's
readers write them, fed the same token batches as the core loop; the row records what mixed
precision actually ran. See docs/engines.md#the-trainer-engines and, for SFTTrainer's bf16 cast
under fp16, docs/engines.md#sfttrainer-with-fp16-on-a-qlora-model-fails-on-a-gpu.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import TrainerCallback

from qlora_core.cases.case import Case
from qlora_core.engines.common import (
    LR_SCHEDULER,
    MAX_GRAD_NORM,
    NO_AUTOCAST,
    WEIGHT_DECAY,
    OnStart,
    OnStep,
    TrainStats,
    check_batches,
    optimizer_state_bytes,
    synchronize,
    trainable_parameters,
)
from qlora_core.engines.pacing import StepClock, StepPlan, plan_steps
from qlora_core.measurement.memory import params_device, trainable_dtypes
from qlora_core.process.outcomes import GRAD_SCALER_BF16, recognised_refusal

# Case.optimizer -> TrainingArguments.optim (transformers' names for the same optimizers).
TRAINER_OPTIMS: dict[str, str] = {
    "adamw": "adamw_torch",
    "adamw_8bit": "adamw_bnb_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
}
# Who builds each engine's trainer, and where its cast of the trainable parameters at init lives
# (read in the library's source; see the module docstring).
TRAINER_NAMES: dict[str, str] = {"trainer": "transformers' Trainer", "sft": "TRL's SFTTrainer"}
CAST_AT_INIT_SOURCE: dict[str, str] = {
    "sft": "trl/trainer/sft_trainer.py casts a quantized model's trainable parameters to bfloat16"
    " whatever fp16/bf16 say",
}


def training_arguments(case: Case, device: str, output_dir: str, plan: StepPlan) -> dict[str, Any]:
    """The keyword arguments of `TrainingArguments` (and `SFTConfig`) for `case`. `max_steps` is
    the most the plan may run; the recorder stops training earlier when the plan is done."""
    return {
        "output_dir": output_dir,
        "per_device_train_batch_size": case.batch_size,
        "gradient_accumulation_steps": case.grad_accum,
        "gradient_checkpointing": case.gradient_checkpointing,
        # Both always given: SFTConfig turns bf16 on when neither is set.
        "fp16": case.compute_dtype == "fp16",
        "bf16": case.compute_dtype == "bf16",
        "optim": TRAINER_OPTIMS[case.optimizer],
        "max_steps": plan.max_total_steps,
        "learning_rate": case.lr,
        "lr_scheduler_type": LR_SCHEDULER,
        "warmup_steps": case.warmup_steps,
        "weight_decay": WEIGHT_DECAY,
        "max_grad_norm": MAX_GRAD_NORM,
        "seed": case.seed,
        "use_cpu": device == "cpu",
        "eval_strategy": "no",
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": 1,
        "logging_nan_inf_filter": False,
        "disable_tqdm": True,
    }


def token_dataset(case: Case, batches: Sequence[torch.Tensor], steps: int) -> Any:
    """The micro-batches as rows of a `datasets.IterableDataset`, in order.

    Iterable, so that no sampler shuffles it: the trainers' dataloader re-forms exactly the same
    micro-batches (`per_device_train_batch_size` rows each, every row `seq_len` ids). `labels`
    equal `input_ids`, as in the loop; the model shifts them.
    """
    from datasets import Dataset

    # A multi-GPU case draws every rank's micro-batches; the dataloader deals them out.
    count = steps * case.grad_accum * case.num_gpus
    rows = [row.tolist() for ids in batches[:count] for row in ids]
    return Dataset.from_dict({"input_ids": rows, "labels": rows}).to_iterable_dataset()


def run_trainer(
    model: torch.nn.Module,
    case: Case,
    batches: Sequence[torch.Tensor],
    device: str,
    on_step: OnStep | None = None,
    plan: StepPlan | None = None,
    on_start: OnStart | None = None,
) -> TrainStats:
    """Train `model` with `transformers.Trainer` on `batches`."""
    from transformers import Trainer, TrainingArguments

    def build(out: str, recorder: StepRecorder) -> Any:
        steps = recorder.clock.plan.max_total_steps
        return Trainer(
            model=model,
            args=TrainingArguments(**training_arguments(case, device, out, recorder.clock.plan)),
            train_dataset=token_dataset(case, batches, steps),
            callbacks=[recorder],
        )

    return _run_hf("trainer", model, case, batches, device, build, plan, on_step, on_start)


def run_sft(
    model: torch.nn.Module,
    case: Case,
    batches: Sequence[torch.Tensor],
    device: str,
    on_step: OnStep | None = None,
    plan: StepPlan | None = None,
    on_start: OnStart | None = None,
) -> TrainStats:
    """Train `model` with TRL's `SFTTrainer` on `batches` (pre-tokenized, packing off)."""
    from trl import SFTConfig, SFTTrainer

    def build(out: str, recorder: StepRecorder) -> Any:
        plan = recorder.clock.plan
        # TRL's name for the sequence length (the lesson's `max_seq_length`; TRL 1.x says max_length).
        config = SFTConfig(
            **training_arguments(case, device, out, plan), max_length=case.seq_len, packing=False
        )
        return SFTTrainer(
            model=model,  # type: ignore[arg-type]  # the peft model, typed nn.Module in the engines
            args=config,
            train_dataset=token_dataset(case, batches, plan.max_total_steps),
            processing_class=pad_only_tokenizer(model),
            callbacks=[recorder],
        )

    return _run_hf("sft", model, case, batches, device, build, plan, on_step, on_start)


def _run_hf(
    engine: str,
    model: torch.nn.Module,
    case: Case,
    batches: Sequence[torch.Tensor],
    device: str,
    build: Callable[[str, StepRecorder], Any],
    plan: StepPlan | None,
    on_step: OnStep | None,
    on_start: OnStart | None,
) -> TrainStats:
    """Check the inputs, build the trainer in a scratch output folder, train, collect the stats."""
    plan = plan or plan_steps(case, device)
    check_batches(case, batches, plan.max_total_steps)
    trainable_parameters(model)  # fail early, before the trainer is built
    given = trainable_dtypes(model)
    with tempfile.TemporaryDirectory(prefix=f"qlora-{engine}-") as out:
        recorder = StepRecorder(engine, case, device, on_step, plan)
        trainer = build(out, recorder)
        cast = cast_at_init(engine, given, trainable_dtypes(trainer.model))
        return _train(trainer, recorder, on_start, cast)


def cast_at_init(engine: str, given: str, built: str) -> str:
    """What building `engine`'s trainer did to the trainable parameters' dtypes (`given` before,
    `built` after, as `measure.trainable_dtypes` names them), in words; "" when it kept them."""
    if given == built:
        return ""
    source = CAST_AT_INIT_SOURCE.get(engine)
    return f"{TRAINER_NAMES[engine]} cast the trainable parameters {given} -> {built} at init" + (
        f" ({source})" if source else ""
    )


def with_cast_named(exc: BaseException, cast: str) -> BaseException:
    """The gradient scaler's refusal of bf16 gradients again, its message led by the trainer's
    `cast` at init (`cast_at_init`) that put them in bf16; `exc` itself for any other error or
    when the trainer cast nothing. The same type and torch's words, so it is classified as before."""
    refusal = recognised_refusal(exc)
    if not cast or refusal is None or refusal.name != GRAD_SCALER_BF16:
        return exc
    return type(exc)(f"{cast}; then {exc}")


def pad_only_tokenizer(model: torch.nn.Module) -> Any:
    """A tokenizer that knows one token, the model's pad (or eos) id.

    SFTTrainer requires a tokenizer, and shapes have none. On pre-tokenized rows with labels, it
    tokenizes nothing: it takes only the pad id, for a collator that pads nothing here (every row
    is `seq_len` long), and writes it back to the model's config. Using the model's own id keeps
    that config unchanged.
    """
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    # The transformers config (peft forwards it); torch types a Module's attributes as Tensor | Module.
    config: Any = model.config
    candidates = [config.pad_token_id, config.eos_token_id, 0]
    pad_id = next(c for c in candidates if c is not None)
    if isinstance(pad_id, list):
        pad_id = pad_id[0]
    pad = "<pad>"
    tokenizer = Tokenizer(WordLevel({pad: int(pad_id)}, unk_token=pad))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=pad, eos_token=pad)


def _train(trainer: Any, recorder: StepRecorder, on_start: OnStart | None, cast: str) -> TrainStats:
    """Run `trainer.train()` and complete the statistics from what the trainer actually used;
    `cast`: what building it did to the trainable dtypes (`cast_at_init`)."""
    accelerator = trainer.accelerator
    stats = recorder.stats
    stats.autocast = accelerator.mixed_precision if accelerator.native_amp else NO_AUTOCAST
    stats.grad_scaler = accelerator.scaler is not None
    stats.scaler_skipped_steps = 0 if stats.grad_scaler else None
    stats.trained_dtypes = trainable_dtypes(trainer.model)
    if on_start is not None:
        on_start(stats)
    try:
        trainer.train()
    except (NotImplementedError, RuntimeError) as exc:
        named = with_cast_named(exc, cast)
        if named is exc:
            raise
        raise named from exc
    finally:
        recorder.clock.close()
    if accelerator.scaler is not None:
        stats.scaler_final_scale = float(accelerator.scaler.get_scale())
    stats.optimizer_state_bytes = optimizer_state_bytes(trainer.optimizer)
    stats.trained_dtypes = trainable_dtypes(trainer.model)
    return stats


class StepRecorder(TrainerCallback):
    """Per optimizer step: synchronized wall time, loss, grad norm, scaler skip, NaN stop; the
    plan's phases through a `StepClock` (slowdown knob, profiler window, adaptive stop).

    A step is timed from `on_step_begin` (its micro-batches already fetched) to `on_step_end`
    (optimizer stepped, gradients zeroed, the slowdown's work queued), each after a device
    synchronization. Its loss and gradient norm arrive in the log that follows; a non-finite
    step, or the end of the plan, stops training there (`max_steps` is the plan's most).
    """

    def __init__(self, engine: str, case: Case, device: str, on_step: OnStep | None, plan: StepPlan) -> None:
        self.device = device
        self.on_step = on_step
        self.stats = TrainStats(engine=engine, autocast=NO_AUTOCAST, grad_scaler=False)
        self.clock = StepClock(plan, case, device, self.stats)
        self._start = 0.0
        self._ended: tuple[int, float | None, bool] | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # The trainer has wrapped (FSDP: flattened, sharded and, under CPU offload, moved to the
        # host) the model it was given by now; `model` is that model, its children FSDP's units.
        self.stats.params_on_in_training = params_device(kwargs["model"])

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.clock.begin_step()
        synchronize(self.device)
        self._start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.clock.pad_step()
        synchronize(self.device)
        measured = self.clock.end_step((time.perf_counter() - self._start) * 1000.0)
        # accelerate's optimizer wrapper knows whether its scaler skipped this step.
        skipped = bool(getattr(kwargs.get("optimizer"), "step_was_skipped", False))
        self._ended = (state.global_step - 1, measured, skipped)  # global_step already counts it

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not logs or "loss" not in logs or self._ended is None:
            return  # the end-of-training summary, or a log of no step
        step, measured, skipped = self._ended
        self._ended = None
        if "grad_norm" not in logs:
            raise RuntimeError(f"the trainer logged no grad_norm at step {step}: {sorted(logs)}")
        loss, grad_norm = float(logs["loss"]), float(logs["grad_norm"])
        stop = self.stats.record_step(step, loss, grad_norm, measured, skipped)
        if self.on_step is not None:
            self.on_step(step, self.stats)
        if stop or self.clock.done:
            control.should_training_stop = True
