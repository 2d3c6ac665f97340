"""Behaviour cloning: fine-tune the policy on expert conversations, loss on agent turns only.

CPU default: a small Llama-architecture model with a BPE tokenizer trained on the expert
data, both made from scratch (qlass.backends.tiny). GPU path: ``base_model`` points to a
local checkpoint (a Llama, say) that is fine-tuned with the same code, whole or, with
``lora.rank`` > 0, through a LoRA adapter (peft) saved in PEFT's layout (the output folder
then holds the adapter and the tokenizer; its base stays in ``base_model``). ``bf16`` with
LoRA also loads the base in bf16, which with ``gradient_checkpointing`` is what lets a 7B
policy train on one GPU. Training uses the
transformers ``Trainer``, so ``accelerate launch``/``torchrun`` spread it over GPUs.

Each training sequence is rendered exactly as the policy will see it at inference:
:mod:`qlass.chat`'s layout through the tokenizer's chat template, with the run's system
prompt and, when ``max_turns`` is set, one example per agent turn with only the most
recent ``max_turns`` turns of history (the target turn is the only one with loss).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import structlog
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from qlass._lora import add_lora, clear_other_kind, load_model, lora_settings_of
from qlass._torch import dtype_argument
from qlass._training import (
    StopCallback,
    checkpointing_arguments,
    reproducible_training,
    resolve_bf16,
)
from qlass.backends.tiny import new_tiny_model, save_model, train_tokenizer
from qlass.config import BCConfig
from qlass.errors import ConfigError, MissingDataError, TrainingStopped
from qlass.types import ChatMessage

__all__ = [
    "TRAINING_FILE",
    "BCResult",
    "build_examples",
    "load_conversations",
    "train_policy",
]

log = structlog.get_logger(__name__)

ProgressFn = Callable[[int, int, float | None], None]


@dataclass(frozen=True, slots=True)
class BCResult:
    """What behaviour cloning produced and what it cost."""

    model_dir: Path
    conversations: int
    examples: int
    train_tokens: int
    steps: int
    final_loss: float
    wall_time_s: float
    determinism: dict[str, Any] = field(default_factory=dict)
    """The torch settings training ran with (threads, deterministic algorithms); also
    written to ``TRAINING_FILE`` in the model directory."""


TRAINING_FILE = "training.json"


def load_conversations(path: Path, limit: int | None = None) -> list[list[ChatMessage]]:
    """Read ``messages`` lists from an expert-trajectory JSONL file (``qlass envs gold``)."""
    if not path.exists():
        raise MissingDataError(f"expert trajectories not found at {path}: run `qlass envs gold`")
    conversations: list[list[ChatMessage]] = []
    with path.open() as handle:
        for number, line in enumerate(handle, 1):
            if limit is not None and len(conversations) >= limit:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                messages = record["messages"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path}:{number}: not an expert-trajectory record") from exc
            conversations.append(messages)
    return conversations


def _with_system(messages: Sequence[ChatMessage], system_prompt: str | None) -> list[ChatMessage]:
    head: list[ChatMessage] = (
        [{"role": "system", "content": system_prompt}] if system_prompt else []
    )
    return head + [m for m in messages if m["role"] != "system"]


def _windows(
    messages: list[ChatMessage], max_turns: int | None
) -> Iterable[tuple[list[ChatMessage], list[int]]]:
    """Yield (messages, indices of assistant messages that carry loss)."""
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if max_turns is None:
        yield messages, assistant
        return
    head = [i for i, m in enumerate(messages) if i < (assistant[0] if assistant else 0)]
    for target in assistant:
        # Keep the system/task head and the last `max_turns` (assistant, observation) pairs.
        start = max(head[-1] + 1 if head else 0, target - 2 * max_turns)
        window = [messages[i] for i in head] + messages[start : target + 1]
        yield window, [len(window) - 1]


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[ChatMessage], **kw: Any) -> str:
    rendered = tokenizer.apply_chat_template(
        cast(list[dict[str, str]], messages), tokenize=False, **kw
    )
    return cast(str, rendered)


def build_examples(
    conversations: Iterable[Sequence[ChatMessage]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    system_prompt: str | None,
    max_length: int,
    max_turns: int | None = None,
) -> list[dict[str, list[int]]]:
    """Tokenise conversations with labels on the agent turns only (-100 elsewhere).

    Assistant spans are found by rendering the conversation up to each assistant turn with
    and without it, which works for any chat template. Sequences longer than
    ``max_length`` are cut from the left (the oldest history goes first).
    """
    examples: list[dict[str, list[int]]] = []
    for conversation in conversations:
        messages = _with_system(conversation, system_prompt)
        for window, targets in _windows(messages, max_turns):
            text = _render(tokenizer, window)
            spans = []
            for i in targets:
                before = _render(tokenizer, window[:i], add_generation_prompt=True)
                upto = _render(tokenizer, window[: i + 1])
                if not upto.startswith(before) or not text.startswith(upto):
                    raise ConfigError("the tokenizer's chat template is not prefix-stable")
                spans.append((len(before), len(upto)))
            encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids: list[int] = encoded["input_ids"]
            labels = [
                tok if any(lo <= start < hi for lo, hi in spans) else -100
                for tok, (start, _end) in zip(ids, encoded["offset_mapping"], strict=True)
            ]
            ids, labels = ids[-max_length:], labels[-max_length:]
            if any(label != -100 for label in labels):
                examples.append(
                    {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
                )
    return examples


@dataclass(frozen=True, slots=True)
class _RightPadCollator:
    """Pad a batch on the right to its longest sequence, with no attention mask.

    Pads come after every real token, so causal attention already keeps them out of every
    real position, and their labels are -100: the loss is exact. Leaving the mask out lets
    the fused causal attention kernel run (a mask forces a much slower path on CPU).
    """

    pad_id: int

    def __call__(self, features: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), longest), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), longest), -100, dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            ids[row, :n] = torch.tensor(feature["input_ids"])
            labels[row, :n] = torch.tensor(feature["labels"])
        return {"input_ids": ids, "labels": labels}


def _length_grouping() -> dict[str, Any]:
    """Batch sequences of similar length together (the argument's name changed in 5.x)."""
    fields = TrainingArguments.__dataclass_fields__
    if "train_sampling_strategy" in fields:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


class _Progress(TrainerCallback):
    def __init__(self, report: ProgressFn) -> None:
        self._report = report
        self.last_loss: float | None = None

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
    ) -> None:
        if logs and "loss" in logs:
            self.last_loss = float(logs["loss"])
        self._report(state.global_step, state.max_steps, self.last_loss)

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._report(state.global_step, state.max_steps, self.last_loss)


def _base(
    config: BCConfig, conversations: list[list[ChatMessage]], seed: int, dtype: torch.dtype
) -> tuple[Any, Any]:
    model: Any
    if config.base_model is not None:
        tokenizer = AutoTokenizer.from_pretrained(config.base_model)
        model = load_model(AutoModelForCausalLM, config.base_model, **dtype_argument(dtype))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer
    texts = [m["content"] for conversation in conversations for m in conversation]
    tokenizer = train_tokenizer(texts, vocab_size=config.vocab_size)
    model = new_tiny_model(
        tokenizer,
        layers=config.layers,
        width=config.width,
        heads=config.heads,
        max_positions=max(config.max_length, 2048),
        seed=seed,
    )
    return model, tokenizer


def _untrained(
    model: Any, tokenizer: Any, output_dir: Path, conversations: int, started: float
) -> BCResult:
    """``bc.examples=0``: the policy before any behaviour cloning, saved as it is (the
    from-scratch tokenizer has still learnt its vocabulary from the expert texts)."""
    clear_other_kind(output_dir, adapter=False)
    save_model(model, tokenizer, output_dir)
    log.info("bc.untrained", model_dir=str(output_dir), vocabulary_from=conversations)
    return BCResult(
        model_dir=output_dir,
        conversations=0,
        examples=0,
        train_tokens=0,
        steps=0,
        final_loss=float("nan"),
        wall_time_s=time.perf_counter() - started,
    )


def train_policy(
    conversations: list[list[ChatMessage]],
    config: BCConfig,
    *,
    output_dir: Path,
    system_prompt: str | None,
    max_turns: int | None,
    seed: int = 0,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> BCResult:
    """Train the policy on ``conversations`` and save it as a model directory.

    ``config.examples == 0`` trains nothing: the base model (or, from scratch, a seeded
    random model whose tokenizer learnt its vocabulary from ``conversations``) is saved
    as it is, the "no BC" point of the BC-examples ablation.

    Raises:
        TrainingStopped: ``should_stop()`` became true; training ended early, nothing saved.
    """
    if not conversations:
        raise MissingDataError("no expert conversations to train on")
    with reproducible_training(seed) as determinism:
        return _train(
            conversations,
            config,
            output_dir=output_dir,
            system_prompt=system_prompt,
            max_turns=max_turns,
            seed=seed,
            progress=progress,
            should_stop=should_stop,
            determinism=determinism,
        )


def _train(
    conversations: list[list[ChatMessage]],
    config: BCConfig,
    *,
    output_dir: Path,
    system_prompt: str | None,
    max_turns: int | None,
    seed: int,
    progress: ProgressFn | None,
    should_stop: Callable[[], bool] | None,
    determinism: dict[str, Any],
) -> BCResult:
    started = time.perf_counter()
    lora = lora_settings_of(config)
    if lora is not None and config.base_model is None:
        raise ConfigError(
            "bc.lora needs bc.base_model (a local model folder to adapt); a policy trained "
            "from scratch trains every weight"
        )
    use_cpu = not torch.cuda.is_available()
    bf16 = resolve_bf16(config.bf16, use_cpu=use_cpu)
    # Full fine-tuning keeps fp32 master weights (bf16 is autocast); under LoRA the frozen
    # base may as well be stored in bf16 (half the memory), the adapter stays fp32.
    model, tokenizer = _base(
        config, conversations, seed, torch.bfloat16 if bf16 and lora else torch.float32
    )
    if config.examples == 0:
        return _untrained(model, tokenizer, output_dir, len(conversations), started)
    if lora is not None:
        assert config.base_model is not None
        model = add_lora(model, lora, task_type="CAUSAL_LM", base_path=config.base_model)
    examples = build_examples(
        conversations,
        tokenizer,
        system_prompt=system_prompt,
        max_length=config.max_length,
        max_turns=max_turns,
    )
    train_tokens = sum(len(e["input_ids"]) for e in examples)
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    log.info(
        "bc.start",
        conversations=len(conversations),
        examples=len(examples),
        tokens=train_tokens,
        steps=math.ceil(steps_per_epoch * config.epochs),
        base=config.base_model or "from scratch",
        lora_rank=lora.rank if lora else None,
    )
    args = TrainingArguments(
        output_dir=str(output_dir / "trainer"),
        per_device_train_batch_size=config.batch_size,
        num_train_epochs=config.epochs,
        learning_rate=config.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        weight_decay=0.01,
        logging_steps=max(1, steps_per_epoch // 4),
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        use_cpu=use_cpu,
        bf16=bf16,
        **checkpointing_arguments(config.gradient_checkpointing),
        **_length_grouping(),
    )
    callback = _Progress(progress or (lambda *_: None))
    stopper = StopCallback(should_stop or (lambda: False))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=examples,
        data_collator=_RightPadCollator(tokenizer.pad_token_id),
        callbacks=[callback, stopper],
    )
    trainer.remove_callback(PrinterCallback)  # progress goes to our callback, not stdout
    output = trainer.train()
    if stopper.stopped:
        raise TrainingStopped(f"BC stopped after {output.global_step} steps; nothing saved")
    clear_other_kind(output_dir, adapter=lora is not None)
    save_model(trainer.model, tokenizer, output_dir)  # type: ignore[arg-type]
    result = BCResult(
        model_dir=output_dir,
        conversations=len(conversations),
        examples=len(examples),
        train_tokens=train_tokens,
        steps=output.global_step,
        final_loss=callback.last_loss if callback.last_loss is not None else output.training_loss,
        wall_time_s=time.perf_counter() - started,
        determinism=determinism,
    )
    record = {"seed": seed, "steps": result.steps, "determinism": determinism}
    (output_dir / TRAINING_FILE).write_text(json.dumps(record, indent=2) + "\n")
    log.info(
        "bc.done",
        model_dir=str(output_dir),
        loss=result.final_loss,
        seconds=round(result.wall_time_s, 1),
    )
    return result
