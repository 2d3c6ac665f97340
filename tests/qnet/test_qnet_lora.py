"""LoRA (peft) for BC and the QNet on a tiny random Llama-architecture model, on CPU, and a
QNet checkpoint loaded with transformers alone in a process that cannot import qlass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.qnet.qnet_helpers import synthetic_steps, varied_queries

pytest.importorskip("peft")


def _perturb_adapter(model: torch.nn.Module) -> None:
    """LoRA's B starts at zero (the adapter is a no-op): give it weights, so that a save or
    load that loses the adapter changes the outputs."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def _lora_b_norm(adapter_dir: Path) -> float:
    """How far the saved adapter is from a fresh one (LoRA's B matrices start at zero)."""
    from safetensors.torch import load_file

    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    norms = [float(w.norm()) for name, w in weights.items() if "lora_B" in name]
    assert norms, "no LoRA B weights in the adapter"
    return sum(norms)


def test_policy_adapter_saves_in_peft_layout_and_the_local_backend_loads_it(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlass._lora import LoraSettings, add_lora
    from qlass.backends.hf import HFPolicy

    model = add_lora(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraSettings(rank=4, target_modules=("q_proj", "v_proj")),
        task_type="CAUSAL_LM",
        base_path=tiny_model_dir,
    )
    _perturb_adapter(model)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = torch.tensor([tokenizer("Your task is to find the coin. move north")["input_ids"]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        plain = model.get_base_model()
        with model.disable_adapter():
            base_logits = plain(input_ids=ids).logits
    out = tmp_path / "policy"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert "config.json" not in files  # adapter only: the base stays in its folder
    config = json.loads((out / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == tiny_model_dir.resolve()

    policy = HFPolicy(out, device="cpu")
    with torch.no_grad():
        after = policy.model(input_ids=ids).logits
    assert not torch.allclose(base_logits, before, atol=1e-3)  # the adapter matters
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


def test_bc_with_lora_trains_an_adapter_on_the_base_model(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from qlass.config import BCConfig
    from qlass.runtime.bc import train_policy

    conversations = [
        [
            {"role": "user", "content": f"Your task is to find the coin. Room {i}."},
            {"role": "assistant", "content": "Thought: go on.\nAction: move north"},
            {"role": "user", "content": "You see the coin."},
            {"role": "assistant", "content": "Thought: take it.\nAction: take coin"},
        ]
        for i in range(4)
    ]
    config = BCConfig(
        base_model=str(tiny_model_dir),
        epochs=2,
        lr=1e-2,
        batch_size=4,
        max_length=256,
        lora={"rank": 4},
        gradient_checkpointing=True,
    )
    result = train_policy(
        conversations, config, output_dir=tmp_path / "policy", system_prompt=None, max_turns=None
    )
    assert result.steps == 2
    assert (tmp_path / "policy" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "policy" / "config.json").exists()
    assert _lora_b_norm(tmp_path / "policy") > 0  # the adapter trained


def test_bc_lora_without_a_base_model_is_a_clear_error(tmp_path: Path) -> None:
    from qlass.config import BCConfig
    from qlass.errors import ConfigError
    from qlass.runtime.bc import train_policy

    conversation = [
        {"role": "user", "content": "task"},
        {"role": "assistant", "content": "Action: look"},
    ]
    with pytest.raises(ConfigError, match=r"bc\.lora needs bc\.base_model"):
        train_policy(
            [conversation],
            BCConfig(lora={"rank": 4}),
            output_dir=tmp_path,
            system_prompt=None,
            max_turns=None,
        )


def test_lora_on_a_module_the_model_lacks_is_a_config_error(tiny_model_dir: Path) -> None:
    from qlass._lora import LoraSettings
    from qlass.errors import ConfigError
    from qlass.qnet.model import QNet

    qnet = QNet.from_backbone(tiny_model_dir, head_dim=32, max_length=512)
    with pytest.raises(ConfigError, match=r"^lora: "):
        qnet.with_lora(LoraSettings(rank=4, target_modules=("no_such_proj",)), tiny_model_dir)


def test_qnet_lora_saves_adapter_beside_the_value_head_and_scores_the_same_after_reload(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from qlass._lora import LoraSettings
    from qlass.qnet.model import QNet, load_tokenizer
    from qlass.qnet.scorer import QNetScorer

    qnet = QNet.from_backbone(tiny_model_dir, head_dim=32, max_length=512, seed=3)
    qnet.with_lora(LoraSettings(rank=4), tiny_model_dir)
    _perturb_adapter(qnet)
    tokenizer = load_tokenizer(tiny_model_dir)
    queries = varied_queries(6)
    before = QNetScorer(qnet, tokenizer, device="cpu", shared_prefix=False).score_batch(queries)
    out = qnet.save_pretrained(tmp_path / "qnet", tokenizer=tokenizer)
    assert (out / "backbone" / "adapter_config.json").is_file()
    assert (out / "backbone" / "adapter_model.safetensors").is_file()
    assert not (out / "backbone" / "config.json").exists()
    assert (out / "value_head.safetensors").is_file()
    after = QNetScorer.from_pretrained(out, device="cpu").score_batch(queries)
    plain = QNet.from_backbone(tiny_model_dir, head_dim=32, max_length=512, seed=3)
    without = QNetScorer(plain, tokenizer, device="cpu", shared_prefix=False).score_batch(queries)
    assert max(abs(a - b) for a, b in zip(before, without, strict=True)) > 1e-4
    assert after == pytest.approx(before, abs=1e-4)


def test_train_qnet_with_lora_runs_and_saves_a_loadable_adapter(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from qlass._lora import LoraSettings
    from qlass.qnet.scorer import QNetScorer
    from qlass.qnet.train import TrainSettings, train_qnet

    settings = TrainSettings(
        output_dir=tmp_path / "qnet",
        head_dim=32,
        batch_size=8,
        micro_batch_size=8,
        max_steps=2,
        max_length=256,
        lr=1e-3,
        use_cpu=True,
        logging_steps=1,
        gradient_checkpointing=True,
        lora=LoraSettings(rank=4),
        eval_before=False,
    )
    result = train_qnet(synthetic_steps(4), tiny_model_dir, settings)
    assert result.steps == 2
    assert all(loss == loss for loss in result.train_losses)  # finite, not NaN
    assert (tmp_path / "qnet" / "backbone" / "adapter_config.json").is_file()
    assert _lora_b_norm(tmp_path / "qnet" / "backbone") > 0  # the adapter trained
    card = (tmp_path / "qnet" / "README.md").read_text()
    assert "LoRA adapter" in card
    assert str(tiny_model_dir) in card
    assert "| steps | 2 |" in card  # the training metrics
    scores = QNetScorer.from_pretrained(tmp_path / "qnet", device="cpu").score_batch(
        varied_queries(3)
    )
    assert len(scores) == 3


# A process that cannot import qlass: every import of it fails (the editable install is
# on sys.path otherwise), and at the end qlass is not among the loaded modules.
_LOAD_WITHOUT_QLASS = """
import importlib.abc, json, sys
class NoQlass(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "qlass":
            raise ImportError(f"blocked: {name}")
        return None
sys.meta_path.insert(0, NoQlass())
import torch
from transformers import AutoModel, AutoTokenizer
folder, texts = sys.argv[1], json.loads(open(sys.argv[2]).read())
qnet = AutoModel.from_pretrained(folder, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
values = []
for text in texts:
    batch = tokenizer([text], add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        values.append(float(qnet(**batch).value[0]))
loaded = sorted(m for m in sys.modules if m == "qlass" or m.startswith("qlass."))
print(json.dumps({"values": values, "qlass_modules": loaded, "class": type(qnet).__name__}))
"""


def test_qnet_checkpoint_loads_with_transformers_alone(qnet_dir: Path, tmp_path: Path) -> None:
    from qlass.qnet.encoding import render
    from qlass.qnet.scorer import QNetScorer

    assert json.loads((qnet_dir / "config.json").read_text())["model_type"] == "qlass_qnet"
    assert (qnet_dir / "modeling_qlass_qnet.py").is_file()
    assert "trust_remote_code=True" in (qnet_dir / "README.md").read_text()
    scorer = QNetScorer.from_pretrained(qnet_dir, device="cpu")
    queries = varied_queries(4)
    expected = scorer.score_batch(queries)
    texts = [render(scorer.tokenizer, q.history, q.candidate_text) for q in queries]
    texts_file = tmp_path / "texts.json"
    texts_file.write_text(json.dumps(texts))
    env = {
        **os.environ,
        "HF_MODULES_CACHE": str(tmp_path / "hf-modules"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": "",
    }
    done = subprocess.run(
        [sys.executable, "-I", "-c", _LOAD_WITHOUT_QLASS, str(qnet_dir), str(texts_file)],
        stdin=subprocess.DEVNULL,  # transformers would ask "run the custom code? [y/N]"
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "custom code" not in done.stdout + done.stderr  # trust_remote_code covers both
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["qlass_modules"] == []
    assert answer["class"] == "QlassQNetModel"
    assert answer["values"] == pytest.approx(expected, abs=1e-4)


# peft absent (as on a box with torch + transformers only): find_spec finds nothing and the
# import fails, so transformers does not import it either.
_LOAD_WITHOUT_PEFT = """
import json, sys
sys.modules["peft"] = None
from qlass.backends.hf import HFPolicy
from qlass.errors import MissingDependencyError
from qlass.qnet.scorer import QNetScorer
plain, lora_qnet, policy = sys.argv[1:4]
answer = {"plain": QNetScorer.from_pretrained(plain, device="cpu").qnet.spec.head_dim}
for name, load in (
    ("qnet", lambda: QNetScorer.from_pretrained(lora_qnet, device="cpu")),
    ("policy", lambda: HFPolicy(policy, device="cpu")),
):
    try:
        load()
        answer[name] = "loaded"
    except MissingDependencyError as exc:
        answer[name] = str(exc)
print(json.dumps(answer))
"""


def test_adapters_without_peft_are_a_one_line_install_error(
    tiny_model_dir: Path, qnet_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    from qlass._lora import LoraSettings, add_lora
    from qlass.qnet.model import QNet, load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    qnet = QNet.from_backbone(tiny_model_dir, head_dim=32, max_length=512)
    lora_qnet = qnet.with_lora(LoraSettings(rank=4), tiny_model_dir).save_pretrained(
        tmp_path / "qnet", tokenizer=tokenizer
    )
    policy = add_lora(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraSettings(rank=4),
        task_type="CAUSAL_LM",
        base_path=tiny_model_dir,
    )
    policy.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _LOAD_WITHOUT_PEFT,
            str(qnet_dir),
            str(lora_qnet),
            str(tmp_path / "policy"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["plain"] == 64  # a checkpoint without an adapter needs no peft
    for name in ("qnet", "policy"):
        assert "pip install 'qlass[peft]'" in answer[name], answer
        assert "\n" not in answer[name]
