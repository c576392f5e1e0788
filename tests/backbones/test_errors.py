"""Bad input fails early, naming the argument and the expected form."""

from __future__ import annotations

import pytest
import torch

from bagpiper_lib import backbones
from bagpiper_lib.registry import RegistryError
from tests.backbones.conftest import embeds, tiny


@pytest.fixture(scope="module")
def backbone():
    return tiny("qwen3")


def test_inputs_embeds_wrong_rank(backbone):
    with pytest.raises(ValueError, match=r"inputs_embeds must be \[B, T, H=64\]"):
        backbone(torch.randn(5, 64), torch.arange(5)[None])


def test_inputs_embeds_wrong_hidden_size(backbone):
    with pytest.raises(ValueError, match="hidden_size = 64"):
        backbone(torch.randn(1, 5, 32), torch.arange(5)[None])


def test_position_ids_shape_mismatch(backbone):
    with pytest.raises(
        ValueError, match=r"position_ids must be \[B, T\] = \(2, 5\) like inputs_embeds, got shape \(1, 5\)"
    ):
        backbone(embeds(2, 5), torch.arange(5)[None])
    with pytest.raises(TypeError, match="position_ids must be an integer tensor"):
        backbone(embeds(1, 5), torch.arange(5.0)[None])


def test_sequence_longer_than_max_positions(backbone):
    limit = backbone.max_position_embeddings
    with pytest.raises(
        ValueError, match=f"position_ids reach {limit}, beyond the model's max_position_embeddings"
    ):
        backbone(embeds(1, limit + 1), torch.arange(limit + 1)[None])
    # A packed row may be longer than the limit when no sample in it is.
    packed = torch.cat([torch.arange(limit), torch.arange(8)])[None]
    assert backbone(embeds(1, limit + 8), packed).shape == (1, limit + 8, backbone.hidden_size)
    with pytest.raises(ValueError, match="position_ids reach"):
        backbone(embeds(1, 2), torch.tensor([[limit - 1, limit]]))
    with pytest.raises(ValueError, match="position_ids must be >= 0"):
        backbone(embeds(1, 2), torch.tensor([[-1, 0]]))


def test_unknown_backbone_name_suggests():
    with pytest.raises(RegistryError, match="Did you mean 'qwen3'"):
        backbones.build({"name": "qwen", "preset": "tiny"})


def test_unknown_attn_implementation():
    with pytest.raises(ValueError, match="unknown attn_implementation 'sdp'. Did you mean 'sdpa'"):
        tiny("qwen3", attn_implementation="sdp")


def test_unavailable_attn_implementation_names_the_install():
    from transformers.utils import is_flash_attn_2_available

    if is_flash_attn_2_available():
        pytest.skip("flash-attn is installed here")
    with pytest.raises(ImportError, match="pip install flash-attn.*Usable here: \\['sdpa', 'eager'"):
        tiny("qwen3", attn_implementation="flash_attention_2")


def test_missing_pretrained_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        backbones.build({"name": "qwen3", "pretrained": str(tmp_path / "nowhere")})
    with pytest.raises(FileNotFoundError, match="not a directory with config.json"):
        backbones.build({"name": "qwen3", "pretrained": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="local_files_only=True"):
        backbones.build({"name": "qwen3", "pretrained": "no-such-org/no-such-model"})


def test_wrong_model_type_for_entry(tmp_path):
    tiny("llama").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds a 'llama' model, not 'qwen3'.*hf_causal_lm"):
        backbones.build({"name": "qwen3", "pretrained": str(tmp_path)})


def test_bad_construction_arguments():
    with pytest.raises(ValueError, match="needs a config dict"):
        backbones.build("qwen3")
    with pytest.raises(ValueError, match="needs model_type"):
        backbones.build({"name": "hf_causal_lm", "config": {"hidden_size": 64}})
    with pytest.raises(ValueError, match="'qwen4' is not a transformers causal LM.*'qwen3'"):
        backbones.build({"name": "hf_causal_lm", "model_type": "qwen4", "config": {"hidden_size": 64}})
    with pytest.raises(ValueError, match="dtype must be one of"):
        tiny("qwen3", dtype="float64")
