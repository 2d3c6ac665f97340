"""``qlass run`` on a local model folder, as a user brings Llama: ``bc.base_model`` and
``qnet.base_model`` point at a tiny random Llama-architecture checkpoint saved the way a
downloaded one is (a Llama-3-style tokenizer and chat template, no pad token, grouped-query
attention), with and without LoRA, through BC, exploration, QNet training and Q-guided
evaluation on TextWorldExpress."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from qlass.runtime.stages import STAGES

# Llama 3's chat format: a begin-of-text token, role headers, <|eot_id|> ending each turn
# (and generation: it is the eos token). There is no pad token.
LLAMA3_SPECIAL = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
CORPUS = [
    "You are in the kitchen. In one part of the room you see a stove. There is also a fridge.",
    "To the North you see the living room. To the South you see the backyard.",
    "Your task is to find a coin. Explore the house and take the coin.",
    "Thought: I should look around first.\nAction: look around",
    "Thought: The coin may be north.\nAction: move north",
    "move south\nmove east\nmove west\ntake coin\ninventory\nopen door to north",
    "You take the coin. You win! Your score has just gone up by one point.",
]


def _llama_style_checkpoint(directory: Path) -> Path:
    """A randomly initialised 2-layer Llama with a byte-level BPE tokenizer trained here."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(
        CORPUS * 20,
        trainer=trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=LLAMA3_SPECIAL,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    bos = raw.token_to_id("<|begin_of_text|>")
    # Like Llama 3's tokenizer: plain tokenising prepends <|begin_of_text|>.
    raw.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"
    )
    tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_theta=500000.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    _teach_the_reply_format(model, tokenizer)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _teach_the_reply_format(model: Any, tokenizer: Any, steps: int = 60) -> None:
    """A few optimiser steps so that, like an instruct model a user brings, the base
    answers in the "Action: ..." format (a random one would make every step invalid, and
    two epochs of BC on two games do not teach it)."""
    import torch

    actions = ["move north", "move south", "move east", "move west", "take coin", "look around"]
    rows = [
        tokenizer.apply_chat_template(
            [
                {"role": "user", "content": CORPUS[i % len(CORPUS)]},
                {"role": "assistant", "content": f"Action: {actions[i % len(actions)]}"},
            ],
            tokenize=False,
        )
        for i in range(12)
    ]
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in rows]
    width = max(map(len, encoded))
    # Right-padded by hand (Llama 3 has no pad token); the pads carry no loss.
    ids = torch.tensor([row + [tokenizer.eos_token_id] * (width - len(row)) for row in encoded])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in encoded])
    labels = ids.masked_fill(mask == 0, -100)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    model.eval()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _llama_style_checkpoint(tmp_path_factory.mktemp("llama-style"))


# Small enough to be quick on a CPU (20 BC steps on 2 games); the policy need not play well,
# only produce some valid steps for the trees, labels and QNet to have something.
OVERRIDES = [
    "env.games=[coin]",
    "env.params=numLocations=2,includeDoors=0",
    "env.train_tasks=2",
    "env.eval_tasks=1",
    "env.max_steps=3",
    "env.pool_size=1",
    "policy.prompt=none",
    "policy.max_tokens=8",
    "policy.max_turns_in_prompt=2",
    "bc.epochs=20",
    "bc.lr=1e-2",
    "bc.max_length=256",
    "explore.width=2",
    "explore.max_depth=2",
    "explore.min_prune_depth=1",
    "explore.concurrency=2",
    "qnet.epochs=1",
    "qnet.batch_size=8",
    "qnet.head_dim=16",
    "qnet.max_length=256",
    "qnet.dev_fraction=0.5",
    "search.strategies=[greedy, qlass:2]",
    "eval.concurrency=2",
]


@pytest.mark.parametrize(
    "variant",
    [
        # Full fine-tuning of the folder; the QNet's backbone is that folder too.
        pytest.param(["qnet.base_model={llama}"], id="full"),
        # LoRA on the folder for BC; the QNet puts its own adapter on the BC adapter.
        pytest.param(["bc.lora.rank=8", "bc.lora.alpha=16", "qnet.lora.rank=8"], id="lora"),
    ],
)
def test_qlass_run_on_a_local_llama_style_checkpoint(
    llama_dir: Path, tmp_path: Path, variant: list[str]
) -> None:
    pytest.importorskip("peft")
    from qlass.cli import app

    run_dir = tmp_path / "run"
    settings = [
        *OVERRIDES,
        f"run_dir={run_dir}",
        "name=llama-style",
        f"bc.base_model={llama_dir}",
        *(item.format(llama=llama_dir) for item in variant),
    ]
    args = ["run", "--stages", ",".join(STAGES)]
    for setting in settings:
        args += ["--set", setting]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output

    lora = "bc.lora.rank=8" in variant
    policy = run_dir / "policy"
    qnet = run_dir / "qnet"
    if lora:
        # The policy is an adapter on the folder; the QNet's backbone an adapter on it.
        adapter = json.loads((policy / "adapter_config.json").read_text())
        assert Path(adapter["base_model_name_or_path"]) == llama_dir.resolve()
        assert not (policy / "config.json").exists()
        backbone = json.loads((qnet / "backbone" / "adapter_config.json").read_text())
        assert Path(backbone["base_model_name_or_path"]) == policy.resolve()
    else:
        assert (policy / "model.safetensors").is_file()
        assert (qnet / "backbone" / "model.safetensors").is_file()
    # The policy kept the folder's tokenizer and its Llama-3 chat template.
    saved = json.loads((policy / "tokenizer_config.json").read_text())
    assert saved["eos_token"] == "<|eot_id|>"
    assert "<|start_header_id|>" in (policy / "chat_template.jinja").read_text()
    assert json.loads((qnet / "config.json").read_text())["model_type"] == "qlass_qnet"

    # Every stage finished, and Q-guided evaluation played every eval task.
    with sqlite3.connect(run_dir / "qlass.db") as db:
        stages = dict(db.execute("select name, status from stages"))
        episodes = dict(db.execute("select strategy, count(*) from episodes group by strategy"))
    assert all(stages[name] == "done" for name in STAGES), stages
    assert episodes == {"greedy": 1, "qlass:2": 1}
