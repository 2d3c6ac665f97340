import json
import shutil
from pathlib import Path

import pytest
import torch

from qlass.errors import MissingDataError
from qlass.qnet.encoding import encode_texts, pad_right, render
from qlass.qnet.model import QNet, load_tokenizer
from tests.qnet.qnet_helpers import varied_queries


def _encode(directory: Path, count: int = 6) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    tok = load_tokenizer(directory)
    texts = [render(tok, q.history, q.candidate_text) for q in varied_queries(count)]
    ids = encode_texts(tok, texts, 1024)
    input_ids, mask = pad_right(ids, tok.pad_token_id)
    return input_ids, mask, ids


def test_head_shape_and_checkpoint_layout(qnet_dir: Path) -> None:
    qnet = QNet.from_pretrained(qnet_dir)
    layers = [m for m in qnet.head.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in layers] == [(64, 64), (64, 64), (64, 1)]
    assert {p.name for p in qnet_dir.iterdir()} >= {
        "backbone",
        "value_head.safetensors",
        "qnet_config.json",
        "tokenizer.json",
    }
    assert (qnet_dir / "backbone" / "model.safetensors").is_file()
    config = json.loads((qnet_dir / "qnet_config.json").read_text())
    assert config["head_dim"] == 64
    assert config["max_length"] == 1024
    assert config["qlass_version"].startswith("0.")


def test_save_then_load_gives_identical_scores(qnet_dir: Path, tmp_path: Path) -> None:
    input_ids, mask, _ = _encode(qnet_dir)
    original = QNet.from_pretrained(qnet_dir).eval()
    with torch.inference_mode():
        before = original(input_ids, mask).value
    moved = original.save_pretrained(tmp_path / "copy", tokenizer=load_tokenizer(qnet_dir))
    reloaded = QNet.from_pretrained(moved).eval()
    with torch.inference_mode():
        after = reloaded(input_ids, mask).value
    assert before is not None and after is not None
    assert torch.equal(before, after)
    assert before.std() > 0  # the scores are not all the same constant


def test_a_checkpoint_from_before_the_transformers_files_loads_the_same(
    qnet_dir: Path, tmp_path: Path
) -> None:
    old = Path(shutil.copytree(qnet_dir, tmp_path / "old"))
    for name in ("config.json", "modeling_qlass_qnet.py", "README.md"):
        (old / name).unlink()
    input_ids, mask, _ = _encode(qnet_dir)
    with torch.inference_mode():
        expected = QNet.from_pretrained(qnet_dir).eval()(input_ids, mask).value
        loaded = QNet.from_pretrained(old).eval()(input_ids, mask).value
    assert expected is not None and loaded is not None
    assert torch.equal(loaded, expected)


def test_right_padded_batch_equals_rows_alone(qnet_dir: Path) -> None:
    input_ids, mask, ids = _encode(qnet_dir)
    assert len({len(x) for x in ids}) > 1  # real padding happens
    qnet = QNet.from_pretrained(qnet_dir).eval()
    with torch.inference_mode():
        batched = qnet(input_ids, mask).value
        alone = torch.cat([qnet(torch.tensor([row])).value for row in ids])
        # Reading the last column instead of the last real token gives other values: the
        # index of the last real token is what makes right padding correct.
        hidden = qnet.backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state
        naive = qnet.head(hidden[:, -1].float())
    assert torch.allclose(batched, alone, atol=1e-5)
    padded_rows = mask.sum(1) < mask.shape[1]
    assert not torch.allclose(naive[padded_rows], alone[padded_rows], atol=1e-3)


def test_forward_returns_mse_loss(qnet_dir: Path) -> None:
    input_ids, mask, _ = _encode(qnet_dir, 4)
    qnet = QNet.from_pretrained(qnet_dir)
    labels = torch.tensor([0.0, 1.0, 0.5, 0.25])
    out = qnet(input_ids, mask, labels=labels)
    assert out.loss is not None and out.value is not None
    assert out.loss.item() == pytest.approx(((out.value - labels) ** 2).mean().item(), rel=1e-6)


def test_from_backbone_caps_max_length_at_position_limit(tiny_model_dir: Path) -> None:
    qnet = QNet.from_backbone(tiny_model_dir, head_dim=8, max_length=4096)
    assert qnet.max_length == 1024  # the tiny backbone has 1024 positions


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(MissingDataError, match="not a QNet checkpoint"):
        QNet.from_pretrained(tmp_path)
    with pytest.raises(MissingDataError, match=r"config\.json missing"):
        QNet.from_backbone(tmp_path)


def test_right_padding_skips_the_backbone_mask_left_padding_keeps_it(qnet_dir: Path) -> None:
    qnet = QNet.from_pretrained(qnet_dir).eval()
    seen: list[object] = []
    qnet.backbone.register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.append(kwargs.get("attention_mask")), with_kwargs=True
    )
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    right = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    left_ids = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]])
    left = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    with torch.inference_mode():
        from_right = qnet(ids, right).value
        from_left = qnet(left_ids, left).value
        alone = qnet(torch.tensor([[9, 10]])).value
    assert seen[0] is None  # causal attention alone hides trailing pads
    assert torch.equal(seen[1], left)  # type: ignore[arg-type]
    assert from_right is not None and from_left is not None and alone is not None
    assert torch.allclose(from_right[1], alone[0], atol=1e-5)
    assert torch.allclose(from_left[1], alone[0], atol=1e-4)  # RoPE: relative positions
