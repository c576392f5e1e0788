"""Adaptors: frame stacking is a reshape, lengths floor-divide, padding is zero, bad input fails clearly."""

from __future__ import annotations

import pytest
import torch

from bagpiper_lib import encoders
from bagpiper_lib.encoders import adaptors
from bagpiper_lib.encoders.adaptors import Adaptor, LinearAdaptor, MLPAdaptor, TransformerAdaptor


def _feats(batch: int = 2, frames: int = 7, dim: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, frames, dim, generator=torch.Generator().manual_seed(seed))


def test_registry_lists_and_builds_every_entry():
    assert {"linear", "mlp", "transformer"} <= set(adaptors.available())
    assert encoders.adaptors.registry is adaptors.registry
    mlp = adaptors.build({"name": "mlp", "input_dim": 32, "output_dim": 64, "downsample": 2})
    assert isinstance(mlp, MLPAdaptor) and isinstance(mlp, torch.nn.Module)
    assert (mlp.input_dim, mlp.output_dim, mlp.hidden_dim, mlp.downsample) == (32, 64, 64, 2)
    assert mlp.proj[0].in_features == 64  # two stacked frames of 32
    assert isinstance(mlp.proj[1], torch.nn.GELU)
    linear = adaptors.build({"name": "linear", "preset": "tiny"})
    assert isinstance(linear, LinearAdaptor) and linear.proj.in_features == linear.input_dim
    assert MLPAdaptor(32, 64, hidden_dim=16).proj[0].out_features == 16
    tfm = adaptors.build({"name": "transformer", "preset": "tiny", "downsample": 2})
    assert isinstance(tfm, TransformerAdaptor) and tfm.proj.in_features == 64
    assert (tfm.hidden_dim, tfm.num_layers, tfm.num_heads, tfm.ffn_dim) == (64, 1, 2, 256)
    assert len(TransformerAdaptor(32, 64, hidden_dim=32, num_layers=3).layers) == 3


@pytest.mark.parametrize("name", ["mlp", "linear", "transformer"])
@pytest.mark.parametrize(("k", "frames"), [(1, 7), (2, 7), (2, 8), (3, 7), (4, 4)])
def test_shapes_and_lengths_follow_floor_rule(name, k, frames):
    adaptor = adaptors.build({"name": name, "input_dim": 32, "output_dim": 48, "downsample": k})
    lengths = torch.tensor([frames, max(k, frames - 3)])
    out, out_lengths = adaptor(_feats(frames=frames), lengths)
    assert out.shape == (2, frames // k, 48)
    assert out_lengths.tolist() == (lengths // k).tolist()
    assert out_lengths.dtype == torch.long
    default_out, default_lengths = adaptor(_feats(frames=frames))
    assert default_lengths.tolist() == [frames // k] * 2
    assert default_out.shape == out.shape


@pytest.mark.parametrize("name", ["mlp", "linear"])
def test_stacking_is_a_concat_of_consecutive_frames(name):
    adaptor = adaptors.build({"name": name, "input_dim": 32, "output_dim": 16, "downsample": 2})
    feats = _feats(frames=7)
    out, lengths = adaptor(feats)
    # frames (0, 1), (2, 3), (4, 5) concatenated; frame 6 (trailing partial group) dropped
    by_hand = torch.cat([feats[:, 0:6:2], feats[:, 1:6:2]], dim=-1)
    assert by_hand.shape == (2, 3, 64)
    torch.testing.assert_close(out, adaptor.proj(by_hand), rtol=0, atol=0)
    assert lengths.tolist() == [3, 3]


def test_padded_positions_are_zero_and_padding_content_is_ignored():
    adaptor = MLPAdaptor(32, 24, downsample=2)
    feats = _feats(frames=9)
    lengths = torch.tensor([9, 5])
    out, out_lengths = adaptor(feats, lengths)
    assert out_lengths.tolist() == [4, 2]
    assert torch.equal(out[1, 2:], torch.zeros_like(out[1, 2:]))
    assert out[1, :2].abs().sum() > 0
    garbage = feats.clone()
    garbage[1, 5:] = float("nan")
    out_garbage, _ = adaptor(garbage, lengths)
    assert torch.equal(out_garbage, out)
    # item 1 alone, unpadded, gives the same valid frames
    alone, _ = adaptor(feats[1:, :5])
    torch.testing.assert_close(out[1:, :2], alone)


def test_transformer_mixes_frames_of_one_item_only():
    """Each output frame sees the whole clip (and where it sits in it), never padding or other items."""
    torch.manual_seed(0)
    adaptor = TransformerAdaptor(32, 24, downsample=2, num_layers=2).eval()
    feats, lengths = _feats(batch=3, frames=10), torch.tensor([10, 7, 4])
    out, out_lengths = adaptor(feats, lengths)
    assert out_lengths.tolist() == [5, 3, 2]
    assert torch.equal(out[1, 3:], torch.zeros_like(out[1, 3:])) and out[1, :3].abs().min() > 0
    garbage = feats.clone()
    garbage[1, 7:] = float("nan")
    garbage[2, 4:] = 1e4
    torch.testing.assert_close(adaptor(garbage, lengths)[0], out, rtol=0, atol=0)
    for b, n in enumerate(lengths.tolist()):  # alone and unpadded: the same frames
        torch.testing.assert_close(
            adaptor(feats[b : b + 1, :n])[0][0], out[b, : n // 2], rtol=1e-5, atol=1e-6
        )
    changed = feats.clone()
    changed[0, 0] += 1.0  # input frame 0 reaches every output frame of item 0, no other item
    out_changed = adaptor(changed, lengths)[0]
    assert (out_changed[0] - out[0]).abs().amax(dim=-1).min() > 1e-4
    torch.testing.assert_close(out_changed[1:], out[1:], rtol=0, atol=0)
    # positions matter: the same frames in reverse order are not the reversed output
    reverse = adaptor(feats[:1].reshape(1, 5, 2, 32).flip(1).reshape(1, 10, 32))[0]
    assert (reverse.flip(1) - out[:1]).abs().max() > 1e-3
    mlp = MLPAdaptor(32, 24, downsample=2)
    torch.testing.assert_close(mlp(changed)[0][0, 1:], mlp(feats)[0][0, 1:], rtol=0, atol=0)


def test_transformer_zero_length_item_keeps_gradients_finite():
    adaptor = TransformerAdaptor(32, 8, downsample=2, num_heads=2)
    feats = _feats(frames=6).requires_grad_()
    out, lengths = adaptor(feats, torch.tensor([6, 0]))
    assert lengths.tolist() == [3, 0] and torch.equal(out[1], torch.zeros_like(out[1]))
    out.square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in adaptor.parameters())
    assert torch.isfinite(feats.grad).all() and torch.equal(feats.grad[1], torch.zeros_like(feats.grad[1]))


@pytest.mark.parametrize("name", ["mlp", "linear", "transformer"])
def test_global_stats_append_the_clip_mean_and_max_of_valid_frames_only(name):
    torch.manual_seed(0)
    spec = {"name": name, "input_dim": 32, "output_dim": 16, "downsample": 2, "global_stats": True}
    adaptor = adaptors.build(spec).eval()
    assert adaptor.global_stats and adaptor.stacked_dim == 3 * 64
    feats, lengths = _feats(batch=3, frames=10), torch.tensor([10, 6, 0])
    out, out_lengths = adaptor(feats, lengths)
    assert out_lengths.tolist() == [5, 3, 0] and torch.equal(out[2], torch.zeros_like(out[2]))
    assert torch.equal(out[1, 3:], torch.zeros_like(out[1, 3:]))
    garbage = feats.clone()
    garbage[1, 6:] = 1e4  # padding never reaches the statistics
    torch.testing.assert_close(adaptor(garbage, lengths)[0], out, rtol=0, atol=0)
    torch.testing.assert_close(adaptor(feats[1:2, :6])[0][0], out[1, :3], rtol=1e-5, atol=1e-6)
    if name != "transformer":  # what the projection sees, by hand
        stacked = feats[1, :6].reshape(3, 64)
        by_hand = torch.cat([stacked, stacked.mean(0).expand(3, -1), stacked.amax(0).expand(3, -1)], dim=-1)
        torch.testing.assert_close(out[1, :3], adaptor.proj(by_hand), rtol=1e-5, atol=1e-6)
    # one loud frame reaches every output frame
    loud = feats.clone()
    loud[0, 9] += 5.0
    assert (adaptor(loud, lengths)[0][0, :4] - out[0, :4]).abs().amax(dim=-1).min() > 1e-3


def test_global_stats_must_be_a_bool():
    with pytest.raises(ValueError, match="global_stats must be true or false"):
        adaptors.build({"name": "mlp", "input_dim": 4, "output_dim": 4, "global_stats": "yes"})


def test_zero_length_item_gives_no_frames():
    out, lengths = LinearAdaptor(32, 8, downsample=2)(_feats(frames=6), torch.tensor([6, 0]))
    assert lengths.tolist() == [3, 0]
    assert torch.equal(out[1], torch.zeros_like(out[1]))


def test_casts_features_to_the_adaptor_dtype():
    adaptor = LinearAdaptor(32, 8).to(torch.bfloat16)
    out, _ = adaptor(_feats())
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["mlp", "linear", "transformer"])
def test_loss_falls_when_training_on_a_fixed_target(name):
    torch.manual_seed(0)
    adaptor = adaptors.build({"name": name, "input_dim": 32, "output_dim": 16, "downsample": 2})
    feats, lengths = _feats(batch=4, frames=10), torch.tensor([10, 8, 6, 4])
    target = torch.randn(4, 5, 16, generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(30):  # plain gradient descent (torch.optim's first step costs seconds of imports)
        out, out_lengths = adaptor(feats, lengths)
        valid = (torch.arange(5)[None] < out_lengths[:, None])[..., None]
        loss = ((out - target) ** 2 * valid).sum() / (valid.sum() * 16)
        adaptor.zero_grad()
        loss.backward()
        with torch.no_grad():
            for param in adaptor.parameters():
                param -= 0.2 * param.grad
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("shape", [(7, 32), (1, 2, 7, 32)])
def test_rejects_feats_of_wrong_rank(shape):
    with pytest.raises(ValueError, match=r"\[B, T, D_in\].*rank"):
        LinearAdaptor(32, 8)(torch.zeros(shape))


def test_rejects_wrong_feature_size_naming_input_dim():
    with pytest.raises(ValueError, match=r"feature size 16.*input_dim=32"):
        MLPAdaptor(32, 8)(torch.zeros(2, 5, 16))


def test_rejects_non_float_feats():
    with pytest.raises(ValueError, match="floating point"):
        LinearAdaptor(32, 8)(torch.zeros(2, 5, 32, dtype=torch.long))


@pytest.mark.parametrize(
    ("lengths", "match"),
    [
        (torch.tensor([5, 6]), r"lengths \[5, 6\] must lie in \[0, T=5\]"),
        (torch.tensor([5, -1]), r"must lie in \[0, T=5\]"),
        (torch.tensor([5]), r"shape \[B\] = \[2\]"),
        (torch.tensor([5.0, 4.0]), "integer frame counts"),
        (torch.tensor([5, 1]), "fewer than downsample=2 frames"),
    ],
)
def test_rejects_bad_lengths(lengths, match):
    with pytest.raises(ValueError, match=match):
        LinearAdaptor(32, 8, downsample=2)(torch.zeros(2, 5, 32), lengths)


@pytest.mark.parametrize("downsample", [0, -2, 1.5, 2.0, True, "2"])
def test_rejects_bad_downsample(downsample):
    with pytest.raises(ValueError, match=r"downsample must be an integer >= 1"):
        adaptors.build({"name": "mlp", "input_dim": 32, "output_dim": 8, "downsample": downsample})


@pytest.mark.parametrize("kwargs", [{"input_dim": 0}, {"output_dim": 2.5}, {"hidden_dim": -1}])
def test_rejects_bad_dims(kwargs):
    spec = {"name": "mlp", "input_dim": 32, "output_dim": 8, **kwargs}
    with pytest.raises(ValueError, match=rf"{next(iter(kwargs))} must be an integer >= 1"):
        adaptors.build(spec)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hidden_dim": 30, "num_heads": 4}, r"hidden_dim=30 must be divisible by num_heads=4"),
        ({"num_layers": 0}, r"num_layers must be an integer >= 1"),
        ({"num_heads": 1.5}, r"num_heads must be an integer >= 1"),
        ({"ffn_dim": 0}, r"ffn_dim must be an integer >= 1"),
        ({"dropout": 1.0}, r"dropout must lie in \[0, 1\)"),
    ],
)
def test_transformer_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        adaptors.build({"name": "transformer", "input_dim": 32, "output_dim": 32, **kwargs})


def test_unknown_adaptor_names_close_matches():
    with pytest.raises(KeyError, match="Did you mean 'mlp'"):
        adaptors.build({"name": "mpl", "input_dim": 4, "output_dim": 4})


def test_adaptor_base_is_shared():
    assert all(issubclass(c, Adaptor) for c in (MLPAdaptor, LinearAdaptor, TransformerAdaptor))
