"""CLIP on open_clip: embeddings, token states, pretrained loading from a local file."""

import json

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from unclip_repro.clip import Clip, ClipConfig, MissingCheckpointError, multi_positive_loss
from unclip_repro.config import get_preset


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return Clip(get_preset("shapes-smoke").clip).eval()


def test_encode_text_gives_unit_z_t_and_token_states(clip):
    captions = ["a small red circle on the left", "a blue square above a green triangle"]
    enc = clip.encode_text(captions)
    assert enc.z_t.shape == (2, clip.embed_dim)
    assert enc.tokens.shape == (2, clip.cfg.context_length, clip.text_width)
    torch.testing.assert_close(enc.z_t.norm(dim=-1), torch.ones(2))
    # the mask covers start token, words and end token, and nothing after
    ids = clip.tokenize(captions)
    assert enc.mask.sum(1).tolist() == [int((row != 0).sum()) for row in ids]
    # z_t is the projected state at the end-of-text token (open_clip's pooling)
    eot = ids.argmax(-1)
    pooled = enc.tokens[torch.arange(2), eot] @ clip.model.text_projection
    torch.testing.assert_close(enc.z_t, torch.nn.functional.normalize(pooled, dim=-1))
    torch.testing.assert_close(enc.z_t, clip.model.encode_text(ids, normalize=True))


def test_encode_image_resizes_and_normalises(clip):
    z32 = clip.encode_image(torch.rand(3, 3, 32, 32))
    z64 = clip.encode_image(torch.rand(3, 3, 64, 64))
    assert z32.shape == z64.shape == (3, clip.embed_dim)
    torch.testing.assert_close(z64.norm(dim=-1), torch.ones(3))


def test_contrastive_loss_learns_a_batch(clip):
    """A few optimiser steps on one batch of renders must drive the CLIP loss well below log(B)."""
    import numpy as np

    from unclip_repro.data import shapes

    torch.manual_seed(0)
    model = Clip(get_preset("shapes-smoke").clip)
    scenes = [shapes.random_scene(np.random.default_rng(i), n_objects=1) for i in range(8)]
    images = shapes.render_batch(scenes, 32)
    text = model.tokenize([shapes.caption(s) for s in scenes])
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    first = model(images, text).item()
    for _ in range(60):
        loss = model(images, text)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 1.5 and loss.item() < 0.3 * first


def test_multi_positive_loss_is_clips_loss_when_each_caption_fits_one_image():
    torch.manual_seed(0)
    z_i = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    z_t = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    plain = open_clip.ClipLoss()(z_i, z_t, scale)
    torch.testing.assert_close(
        multi_positive_loss(z_i, z_t, scale, torch.eye(6, dtype=bool)), plain
    )


def test_multi_positive_loss_does_not_push_a_partial_caption_off_the_images_it_fits():
    """Caption 0 ("a red shape") is true of images 0 and 1: the loss is lower with z_t[0]
    between them than on image 0 alone."""
    z_i = torch.eye(3)
    positives = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.bool)
    scale = torch.tensor(20.0)
    between = torch.nn.functional.normalize(
        torch.tensor([[1.0, 1, 0], [0, 1, 0], [0, 0, 1]]), dim=-1
    )
    own = torch.eye(3)  # caption 0 on image 0 only
    assert multi_positive_loss(z_i, between, scale, positives) < multi_positive_loss(
        z_i, own, scale, positives
    )
    # the plain loss, which scores caption 0 as false of image 1, prefers the opposite
    plain = open_clip.ClipLoss()
    assert plain(z_i, own, scale) < plain(z_i, between, scale)


def test_conv_and_vit_towers_embed_and_refuse_unknown_ones():
    for vision in ("conv", "vit"):
        cfg = ClipConfig(
            embed_dim=16,
            vision=vision,
            conv_widths=(8, 16),
            vision_width=32,
            vision_layers=1,
            text_width=32,
            text_layers=1,
        )
        z = Clip(cfg).encode_image(torch.rand(2, 3, 32, 32))
        assert z.shape == (2, 16)
    with pytest.raises(ValueError, match="unknown vision tower"):
        Clip(ClipConfig(vision="resnet"))


def test_words_outside_the_shapes_vocabulary_are_unknown(clip):
    assert clip.unknown_words("a large red zebra on the moon") == ["zebra", "moon"]
    ids = clip.tokenize(["a red zebra", "a red moon"])
    assert torch.equal(ids[0], ids[1])  # both unknown words map to the same id


def test_pretrained_from_missing_file_is_one_clear_error(tmp_path):
    cfg = ClipConfig(pretrained="ViT-B-32", checkpoint=str(tmp_path / "absent.safetensors"))
    with pytest.raises(MissingCheckpointError, match="ViT-B-32.*absent.safetensors"):
        Clip(cfg)


def test_pretrained_loads_from_a_local_file(tmp_path):
    """An OpenCLIP checkpoint on disk is loaded through open_clip, weights intact."""
    name = "unclip-test-tiny"
    spec = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "head_width": 16,
            "patch_size": 16,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    (tmp_path / f"{name}.json").write_text(json.dumps(spec))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    reference = open_clip.create_model(name)
    weights = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(weights, tmp_path / "weights.safetensors")
    clip = Clip(ClipConfig(pretrained=name, checkpoint=str(tmp_path / "weights.safetensors")))
    for k, v in weights.items():
        torch.testing.assert_close(clip.model.state_dict()[k], v, msg=k)
    enc = clip.encode_text(["a red circle"])
    assert enc.z_t.shape == (1, 16) and enc.tokens.shape == (1, 16, 32)
    assert clip.encode_image(torch.rand(1, 3, 64, 64)).shape == (1, 16)
