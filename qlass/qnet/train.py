"""Train a QNet on labelled steps with the transformers ``Trainer``.

Regression with MSE on the value read at the last token, the paper's settings as defaults
(global batch 64, 3 epochs, lr 1e-5 with cosine decay, warmup 3 %, max length 4096). The
dev split is made by task, never by node, so no state of a dev task is seen in training.
Dev MSE and Spearman rank correlation are measured before and after training.

Because the loop is the ``Trainer``'s, the same call runs on one CPU, one GPU, or many
GPUs under ``accelerate launch`` / ``torchrun`` (DDP; FSDP through ``accelerate config``).
The global batch stays ``batch_size``: gradient accumulation makes up the difference
between it and ``micro_batch_size x processes``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
import torch
from torch.utils.data import Dataset
from transformers import PrinterCallback, TrainerCallback, TrainingArguments

from qlass._lora import LoraSettings, lora_settings_of
from qlass._training import (
    StopCallback,
    checkpointing_arguments,
    reproducible_training,
    resolve_bf16,
)
from qlass.errors import TrainingStopped, UserError
from qlass.qnet.encoding import encode_texts, ensure_chat_template, pad_right, render
from qlass.qnet.metrics import regression_metrics, sibling_accuracy, sibling_spread, spearman
from qlass.qnet.model import CONFIG_FILE, QNet, is_peft_model, load_tokenizer
from qlass.qnet.ranking import RankingTrainer, sibling_groups
from qlass.types import LabelledStep

if TYPE_CHECKING:
    from qlass.config import RunConfig

__all__ = [
    "LabelledStepDataset",
    "ProgressFn",
    "QNetCollator",
    "TaskSplit",
    "TrainResult",
    "TrainSettings",
    "qnet_train_settings",
    "regression_metrics",
    "sibling_accuracy",
    "spearman",
    "split_by_task",
    "train_qnet",
]

log = structlog.get_logger(__name__)

ProgressFn = Callable[[int, int, float | None], None]
"""Called as ``fn(step, total_steps, loss)`` after each optimizer step, on rank 0 only;
``loss`` is the latest logged training loss (``None`` before the first log)."""

METRICS_FILE = "train_metrics.json"


@dataclass(frozen=True, slots=True)
class TrainSettings:
    """QNet training settings; defaults are the paper's where it has one.

    ``batch_size`` is the global batch per optimizer step; ``micro_batch_size`` the
    sequences per device per forward pass. ``max_steps`` (if set) overrides ``epochs``.
    ``bf16=None`` means bf16 mixed precision exactly when a bf16-capable GPU is used.
    ``save_steps`` writes resumable Trainer checkpoints under ``output_dir`` (off by default).
    ``rank_weight`` > 0 adds :func:`~qlass.qnet.ranking.sibling_margin_loss` to the paper's MSE, with the
    candidates of one state kept together in training batches. ``lora``: train a LoRA
    adapter on the backbone (and the head) instead of every weight; with bf16 the frozen
    backbone is then stored in bf16 as well.
    """

    output_dir: Path
    head_dim: int = 1024
    batch_size: int = 64
    micro_batch_size: int = 8
    epochs: float = 3.0
    lr: float = 1e-5
    warmup_ratio: float = 0.03
    max_length: int = 4096
    max_turns: int | None = None
    dev_fraction: float = 0.1
    seed: int = 0
    max_steps: int | None = None
    weight_decay: float = 0.0
    bf16: bool | None = None
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    save_steps: int | None = None
    dataloader_workers: int = 0
    use_cpu: bool = False
    eval_before: bool = True
    rank_weight: float = 0.0
    lora: LoraSettings | None = None


def qnet_train_settings(config: RunConfig, **overrides: Any) -> TrainSettings:
    """The settings of a run config's ``qnet`` section (``overrides`` win)."""
    q = config.qnet
    settings: dict[str, Any] = {
        "output_dir": config.qnet_dir,
        "head_dim": q.head_dim,
        "batch_size": q.batch_size,
        "micro_batch_size": min(q.micro_batch_size, q.batch_size),
        "epochs": q.epochs,
        "lr": q.lr,
        "warmup_ratio": q.warmup_ratio,
        "max_length": q.max_length,
        "max_turns": q.max_turns,
        "dev_fraction": q.dev_fraction,
        "rank_weight": q.rank_weight,
        "bf16": q.bf16,
        "gradient_checkpointing": q.gradient_checkpointing,
        "lora": lora_settings_of(q),
        "seed": config.seed,
    }
    return TrainSettings(**(settings | overrides))


@dataclass(frozen=True, slots=True)
class TaskSplit:
    """Labelled steps split by task: every step of a task is on one side only."""

    train: tuple[LabelledStep, ...]
    dev: tuple[LabelledStep, ...]
    train_tasks: tuple[str, ...]
    dev_tasks: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What a training run produced: the checkpoint, its metrics and timings."""

    checkpoint_dir: Path
    train_examples: int
    dev_examples: int
    train_tasks: int
    dev_tasks: int
    steps: int
    train_losses: tuple[float, ...]
    dev_mse_before: float | None
    dev_mse: float | None
    dev_spearman: float | None
    dev_sibling_accuracy: float | None
    dev_mse_mean_baseline: float | None
    train_seconds: float
    eval_seconds: float
    dev_sibling_spread: float | None = None
    """Median sibling gap of the predictions over the labels' (near 0: action-blind)."""
    settings: dict[str, Any] = field(default_factory=dict)
    determinism: dict[str, Any] = field(default_factory=dict)
    """The torch settings training ran with (threads, deterministic algorithms)."""

    def metrics(self) -> dict[str, Any]:
        """A JSON-ready summary (what is stored with the checkpoint and in the DB)."""
        data = asdict(self)
        data["checkpoint_dir"] = str(self.checkpoint_dir)
        data["train_losses"] = list(self.train_losses)
        data["first_train_loss"] = self.train_losses[0] if self.train_losses else None
        data["last_train_loss"] = self.train_losses[-1] if self.train_losses else None
        return data


def split_by_task(steps: Sequence[LabelledStep], dev_fraction: float, seed: int) -> TaskSplit:
    """Hold out ``dev_fraction`` of the tasks (at least one when there are two or more).

    The shuffle is seeded and independent of the input order.
    """
    tasks = sorted({s.task_key for s in steps})
    random.Random(seed).shuffle(tasks)
    n_dev = round(len(tasks) * dev_fraction) if dev_fraction > 0 else 0
    if dev_fraction > 0 and len(tasks) >= 2:
        n_dev = min(max(n_dev, 1), len(tasks) - 1)
    dev_tasks = frozenset(tasks[:n_dev])
    train = tuple(s for s in steps if s.task_key not in dev_tasks)
    dev = tuple(s for s in steps if s.task_key in dev_tasks)
    train_task_set = {s.task_key for s in train}
    assert not train_task_set & dev_tasks, "a task is in both splits"
    return TaskSplit(train, dev, tuple(sorted(train_task_set)), tuple(sorted(dev_tasks)))


class LabelledStepDataset(Dataset[dict[str, Any]]):
    """Renders and tokenizes each labelled step on access (no whole-set token copy in RAM).

    With ``with_groups``, each item also carries its sibling group (:func:`~qlass.qnet.ranking.sibling_groups`).
    """

    def __init__(
        self,
        steps: Sequence[LabelledStep],
        tokenizer: Any,
        max_length: int,
        max_turns: int | None = None,
        *,
        with_groups: bool = False,
    ) -> None:
        self.steps = list(steps)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_turns = max_turns
        self.groups = sibling_groups(self.steps) if with_groups else None

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, index: int) -> dict[str, Any]:
        step = self.steps[index]
        text = render(self.tokenizer, step.history, step.candidate_text, self.max_turns)
        (ids,) = encode_texts(self.tokenizer, [text], self.max_length)
        item: dict[str, Any] = {"input_ids": ids, "labels": step.q}
        if self.groups is not None:
            item["groups"] = self.groups[index]
        return item


@dataclass(frozen=True, slots=True)
class QNetCollator:
    """Pads a batch on the right to its longest sequence (dynamic padding)."""

    pad_id: int

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids, mask = pad_right([f["input_ids"] for f in features], self.pad_id)
        labels = torch.tensor([float(f["labels"]) for f in features], dtype=torch.float32)
        batch = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
        if "groups" in features[0]:
            batch["groups"] = torch.tensor([int(f["groups"]) for f in features])
        return batch


class _ProgressCallback(TrainerCallback):
    def __init__(self, fn: ProgressFn) -> None:
        self.fn = fn
        self.loss: float | None = None

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        loss = (logs or {}).get("loss")
        if isinstance(loss, int | float):
            self.loss = float(loss)
            if state.is_world_process_zero:  # the log comes after the step it measures
                self.fn(state.global_step, state.max_steps, self.loss)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.fn(state.global_step, state.max_steps, self.loss)


def _finite_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _compute_metrics(prediction: Any, states: Sequence[Hashable]) -> dict[str, float]:
    # The Trainer evaluates the dev set in order, so predictions line up with ``states``.
    metrics = regression_metrics(prediction.predictions, prediction.label_ids)
    metrics["sibling_accuracy"] = sibling_accuracy(
        prediction.predictions, prediction.label_ids, states
    )
    metrics["sibling_spread"] = sibling_spread(prediction.predictions, prediction.label_ids, states)
    return metrics


def _version_specific_arguments(settings: TrainSettings) -> dict[str, Any]:
    """Names that changed between transformers 4.x and 5.x."""
    fields = TrainingArguments.__dataclass_fields__
    kwargs: dict[str, Any] = {}
    if "warmup_ratio" in fields:  # 4.x; 5.x takes a float ratio as warmup_steps
        kwargs["warmup_ratio"] = settings.warmup_ratio
    else:
        kwargs["warmup_steps"] = settings.warmup_ratio
    return kwargs | checkpointing_arguments(settings.gradient_checkpointing)


def _training_arguments(settings: TrainSettings, quiet: bool) -> TrainingArguments:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = max(1, math.ceil(settings.batch_size / (settings.micro_batch_size * world)))
    on_gpu = torch.cuda.is_available() and not settings.use_cpu
    bf16 = resolve_bf16(settings.bf16, use_cpu=settings.use_cpu)
    return TrainingArguments(
        output_dir=str(settings.output_dir),
        per_device_train_batch_size=settings.micro_batch_size,
        per_device_eval_batch_size=settings.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps if settings.max_steps is not None else -1,
        learning_rate=settings.lr,
        lr_scheduler_type="cosine",
        weight_decay=settings.weight_decay,
        bf16=bf16,
        logging_strategy="steps",
        logging_steps=settings.logging_steps,
        logging_first_step=True,
        eval_strategy="no",
        save_strategy="steps" if settings.save_steps else "no",
        save_steps=settings.save_steps or 500,
        report_to="none",
        disable_tqdm=quiet,
        dataloader_num_workers=settings.dataloader_workers,
        dataloader_pin_memory=on_gpu,
        remove_unused_columns=False,
        label_names=["labels"],
        # Every parameter (backbone and head) gets a gradient; DDP need not search.
        ddp_find_unused_parameters=False,
        seed=settings.seed,
        use_cpu=settings.use_cpu,
        **_version_specific_arguments(settings),
    )


def train_qnet(
    steps: Sequence[LabelledStep],
    init_dir: str | Path,
    settings: TrainSettings,
    *,
    on_progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train a QNet on ``steps`` and save it to ``settings.output_dir``.

    ``init_dir`` is either a model directory (the BC policy: its backbone is used and a
    fresh head is added) or a QNet checkpoint (training continues from it). Returns the
    result on every rank; only rank 0 writes the checkpoint.

    Raises:
        UserError: no training examples (after the task split).
        MissingDataError: ``init_dir`` holds no usable model or tokenizer.
        TrainingStopped: ``should_stop()`` became true; training ended early, nothing saved.
    """
    split = split_by_task(steps, settings.dev_fraction, settings.seed)
    if not split.train:
        raise UserError("no training examples: the triples are empty or all in the dev split")
    init_dir = Path(init_dir)
    lora = settings.lora
    dtype = (
        torch.bfloat16
        if lora and resolve_bf16(settings.bf16, use_cpu=settings.use_cpu)
        else torch.float32
    )
    if (init_dir / CONFIG_FILE).is_file():
        # A LoRA checkpoint trains on as an adapter under qnet.lora, merged otherwise.
        qnet = QNet.from_pretrained(init_dir, dtype=dtype, trainable=lora is not None)
        base = init_dir / "backbone"
        if (
            lora
            and not is_peft_model(qnet.backbone)
            and base.resolve().is_relative_to(settings.output_dir.resolve())
        ):
            raise UserError(
                f"a LoRA QNet on the backbone of {init_dir} needs that backbone to stay: "
                "save it elsewhere (another output folder)"
            )
    else:
        qnet = QNet.from_backbone(
            init_dir,
            head_dim=settings.head_dim,
            max_length=settings.max_length,
            max_turns=settings.max_turns,
            dtype=dtype,
            seed=settings.seed,
        )
        base = init_dir
    if lora and not is_peft_model(qnet.backbone):
        qnet.with_lora(lora, base)
    tokenizer = load_tokenizer(init_dir)
    ensure_chat_template(tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    log.info(
        "qnet training",
        train_examples=len(split.train),
        dev_examples=len(split.dev),
        train_tasks=len(split.train_tasks),
        dev_tasks=len(split.dev_tasks),
        max_length=qnet.max_length,
    )
    progress = _ProgressCallback(on_progress) if on_progress is not None else None
    stopper = StopCallback(should_stop or (lambda: False))
    window = qnet.spec.max_turns
    dev_set = (
        LabelledStepDataset(split.dev, tokenizer, qnet.max_length, window) if split.dev else None
    )
    ranking = settings.rank_weight > 0
    trainer = RankingTrainer(
        model=qnet,
        rank_weight=settings.rank_weight,
        args=_training_arguments(settings, quiet=progress is not None),
        data_collator=QNetCollator(tokenizer.pad_token_id),
        train_dataset=LabelledStepDataset(
            split.train, tokenizer, qnet.max_length, window, with_groups=ranking
        ),
        eval_dataset=dev_set,
        compute_metrics=functools.partial(
            _compute_metrics, states=[(step.tree_id, step.history) for step in split.dev]
        ),
        callbacks=[stopper] if progress is None else [progress, stopper],
    )
    if progress is not None:  # the caller shows progress; don't also print raw log dicts
        trainer.remove_callback(PrinterCallback)
    eval_seconds = 0.0
    before: dict[str, float] = {}
    if dev_set is not None and settings.eval_before:
        started = time.perf_counter()
        before = trainer.evaluate()
        eval_seconds += time.perf_counter() - started
    started = time.perf_counter()
    with reproducible_training(settings.seed) as determinism:
        trainer.train()
    train_seconds = time.perf_counter() - started
    if stopper.stopped:
        raise TrainingStopped(
            f"QNet training stopped after {trainer.state.global_step} steps; nothing saved"
        )
    after: dict[str, float] = {}
    if dev_set is not None:
        started = time.perf_counter()
        after = trainer.evaluate()
        eval_seconds += time.perf_counter() - started
    baseline = None
    if split.dev:
        mean_q = float(np.mean([s.q for s in split.train]))
        baseline = float(np.mean([(s.q - mean_q) ** 2 for s in split.dev]))
    result = TrainResult(
        checkpoint_dir=settings.output_dir,
        train_examples=len(split.train),
        dev_examples=len(split.dev),
        train_tasks=len(split.train_tasks),
        dev_tasks=len(split.dev_tasks),
        steps=trainer.state.global_step,
        train_losses=tuple(float(e["loss"]) for e in trainer.state.log_history if "loss" in e),
        dev_mse_before=_finite_or_none(before.get("eval_mse")),
        dev_mse=_finite_or_none(after.get("eval_mse")),
        dev_spearman=_finite_or_none(after.get("eval_spearman")),
        dev_sibling_accuracy=_finite_or_none(after.get("eval_sibling_accuracy")),
        dev_sibling_spread=_finite_or_none(after.get("eval_sibling_spread")),
        dev_mse_mean_baseline=baseline,
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        settings={k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        determinism=determinism,
    )
    # Gathers the full weights under FSDP; a plain state dict otherwise.
    state_dict = trainer.accelerator.get_state_dict(trainer.model)
    if trainer.is_world_process_zero():
        qnet.save_pretrained(
            settings.output_dir, tokenizer=tokenizer, state_dict=state_dict, metrics=asdict(result)
        )
        (settings.output_dir / METRICS_FILE).write_text(
            json.dumps(result.metrics(), indent=2) + "\n"
        )
        log.info(
            "qnet trained",
            steps=result.steps,
            dev_mse=result.dev_mse,
            dev_spearman=result.dev_spearman,
            dev_sibling_accuracy=result.dev_sibling_accuracy,
            dev_sibling_spread=result.dev_sibling_spread,
            seconds=round(train_seconds, 1),
        )
    return result
