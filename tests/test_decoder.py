"""The U-Net and the decoder (§2.1 of unCLIP): conditioning paths, dropout, guidance, inversion."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unclip_repro.clip import TextEncoding
from unclip_repro.decoder import Decoder, DecoderConfig, TextEncoder
from unclip_repro.unet import AttentionBlock, UNet, UNetConfig

D, W, R, B = 8, 12, 16, 2
UNET = UNetConfig(channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,))


def _wake(module: torch.nn.Module, seed: int = 0) -> None:
    """Give the zero-initialised output layers random weights, so every path shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _decoder(**kw) -> Decoder:
    torch.manual_seed(0)
    decoder = Decoder(DecoderConfig(unet=UNET, sample_steps=6, **kw), D, W, R).eval()
    _wake(decoder)
    return decoder


def _text(seed: int = 0) -> TextEncoding:
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[True] * 3 + [False] * 2, [True] * 5])
    tokens = torch.randn(B, 5, W, generator=g)
    return TextEncoding(F.normalize(torch.randn(B, D, generator=g), dim=-1), tokens, mask)


def _z(seed: int = 1) -> torch.Tensor:
    return F.normalize(torch.randn(B, D, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize(
    "cfg, resolution",
    [
        (UNET, 16),
        (
            UNetConfig(
                in_channels=6, channels=16, channel_mult=(1, 2, 2), attention_resolutions=()
            ),
            32,
        ),
    ],
)
def test_unet_shapes_and_identity_at_init(cfg, resolution):
    net = UNet(cfg, resolution)
    x = torch.randn(3, cfg.in_channels, resolution, resolution)
    out = net(x, torch.tensor([0, 10, 999]))
    assert out.shape == (3, cfg.out_channels, resolution, resolution)
    assert out.abs().max() == 0  # zero-initialised output: ε̂ = 0 before training
    if not cfg.attention_resolutions:
        assert not any(isinstance(m, AttentionBlock) for m in net.modules())


def test_attention_reads_context_only_where_the_mask_allows():
    torch.manual_seed(0)
    block = AttentionBlock(16, 8, context_dim=4, groups=4)
    _wake(block)
    x, ctx = torch.randn(2, 16, 4, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = block(x, ctx, mask)
    ctx2 = ctx.clone()
    ctx2[0, 2] += 5.0  # a masked token changes: nothing happens
    torch.testing.assert_close(block(x, ctx2, mask), out)
    ctx2[0, 0] += 5.0  # a visible token changes: the output does
    assert not torch.allclose(block(x, ctx2, mask)[0], out[0])


def test_decoder_conditions_on_z_i_and_caption_and_dropout_removes_each():
    decoder, text, z = _decoder(), _text(), _z()
    x, t = torch.randn(B, 3, R, R), torch.tensor([100, 700])
    args = (text.tokens, text.mask)
    base = decoder.denoise(x, t, *args, z)
    assert not torch.allclose(decoder.denoise(x, t, *args, _z(2)), base)  # reads z_i
    assert not torch.allclose(decoder.denoise(x, t, text.tokens + 1, text.mask, z), base)  # caption
    yes = torch.ones(B, dtype=torch.bool)
    dz = decoder.denoise(x, t, *args, z, drop_z=yes)
    torch.testing.assert_close(decoder.denoise(x, t, *args, _z(2), drop_z=yes), dz)
    dt = decoder.denoise(x, t, *args, z, drop_text=yes)
    torch.testing.assert_close(
        decoder.denoise(x, t, text.tokens + 1, text.mask, z, drop_text=yes), dt
    )
    # padding past the caption is never read
    noisy = text.tokens + 5.0 * (~text.mask[..., None])
    torch.testing.assert_close(decoder.denoise(x, t, noisy, text.mask, z), base)


def test_own_text_encoder_reads_ids_is_trained_by_the_loss_and_ignores_padding():
    """GLIDE's text encoder in the decoder (`text_layers`): ids in, its states as context and
    final token; a caption's prediction does not depend on the batch's padding or on what
    follows it; a dropped caption is not read; the diffusion loss trains the encoder."""
    torch.manual_seed(0)
    cfg = DecoderConfig(unet=UNET, text_layers=2, text_width=16, text_heads=2)
    decoder = Decoder(cfg, D, W, R, vocab_size=20, context_length=6).eval()
    _wake(decoder)
    ids = torch.tensor([[3, 4, 5, 0, 0, 0], [3, 5, 4, 6, 7, 0]])  # "words", then padding
    mask, z = ids != 0, _z()
    x, t = torch.randn(B, 3, R, R), torch.tensor([100, 700])

    def predict(x, t, ids, mask, z, **drop):  # noqa: ANN001, ANN202
        return decoder.denoise(x, t, *decoder.read_caption(ids, mask), z, **drop)

    base = predict(x, t, ids, mask, z)
    swapped = ids.clone()
    swapped[0, 1:3] = swapped[0, 1:3].flip(0)  # the same words in another order
    assert not torch.allclose(predict(x, t, swapped, mask, z)[0], base[0])
    padded = ids.clone()
    padded[0, 3:] = 9  # what lies under the mask is never read
    torch.testing.assert_close(predict(x, t, padded, mask, z), base)
    alone = predict(x[:1], t[:1], ids[:1, :3], mask[:1, :3], z[:1])
    torch.testing.assert_close(alone, base[:1], rtol=1e-5, atol=1e-5)  # batch padding: nothing
    yes = torch.ones(B, dtype=torch.bool)
    dropped = predict(x, t, ids, mask, z, drop_text=yes)
    torch.testing.assert_close(predict(x, t, swapped, mask, z, drop_text=yes), dropped)
    text = TextEncoding(z, torch.zeros(B, 6, W), mask, ids)  # sampling reads the ids, once
    cond, _ = decoder.conditioning(text, z)
    assert torch.equal(cond["tokens"], decoder.read_caption(ids, mask)[0])
    decoder.train()(images=(x.clamp(-1, 1) + 1) / 2, tokens=ids, mask=mask, z_i=z).backward()
    grads = [p.grad for p in decoder.text_encoder.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_own_text_encoder_starts_with_words_and_places_on_one_scale():
    """What enters the encoder for one word at two places of a caption differs at
    initialisation: the position embedding is not drowned by the word's (trained from there,
    the encoder stayed a bag of words, which cannot bind)."""
    torch.manual_seed(0)
    encoder = TextEncoder(vocab_size=49408, context_length=77, width=128, layers=4, heads=4)
    x = encoder.embed(torch.tensor([7, 7])) + encoder.pos[[1, 7]]  # word 7 at places 1 and 7
    assert F.cosine_similarity(x[0], x[1], dim=0) < 0.9


def test_caption_reaches_a_unet_without_attention_through_its_final_token():
    no_attention = UNetConfig(
        channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=()
    )
    torch.manual_seed(0)
    decoder = Decoder(DecoderConfig(unet=no_attention), D, W, R).eval()
    _wake(decoder)
    text, z = _text(), _z()
    x, t = torch.randn(B, 3, R, R), torch.tensor([100, 700])
    base = decoder.denoise(x, t, text.tokens, text.mask, z)
    first = text.tokens.clone()
    first[:, 0] += 1.0  # not the final token, and no attention to read it
    torch.testing.assert_close(decoder.denoise(x, t, first, text.mask, z), base)
    final = text.tokens.clone()
    final[0, 2] += 1.0  # caption 0 has 3 tokens: its final one (GLIDE's class embedding)
    changed = decoder.denoise(x, t, final, text.mask, z)
    assert not torch.allclose(changed[0], base[0])
    torch.testing.assert_close(changed[1], base[1])


def test_coordinate_channels_widen_only_the_input_convolution():
    plain, coords = UNET, UNetConfig(**{**UNET.__dict__, "coords": True})
    a, b = UNet(plain, R), UNet(coords, R)
    assert b.input_conv.in_channels == a.input_conv.in_channels + 2
    n = sum(p.numel() for p in b.parameters()) - sum(p.numel() for p in a.parameters())
    assert n == 2 * 9 * UNET.channels
    _wake(b)
    assert b(torch.randn(2, 3, R, R), torch.tensor([5, 500])).shape == (2, 3, R, R)


def test_glide_baseline_ignores_the_image_embedding():
    glide, text = _decoder(image_embedding=False), _text()
    x, t = torch.randn(B, 3, R, R), torch.tensor([100, 700])
    a = glide.denoise(x, t, text.tokens, text.mask, _z(1))
    torch.testing.assert_close(glide.denoise(x, t, text.tokens, text.mask, _z(2)), a)
    assert not hasattr(glide, "z_emb")


def test_training_drops_z_i_ten_percent_and_the_caption_half_of_the_time(monkeypatch):
    decoder = _decoder()
    seen = {}

    def spy(x_t, t, drop_text=None, drop_z=None, **kw):
        seen["text"], seen["z"] = drop_text.float().mean().item(), drop_z.float().mean().item()
        return torch.zeros_like(x_t)

    monkeypatch.setattr(decoder, "denoise", spy)
    n = 4000
    torch.manual_seed(0)
    decoder(
        torch.rand(n, 3, 2, 2),
        torch.zeros(n, 1, W),
        torch.ones(n, 1, dtype=torch.bool),
        torch.zeros(n, D),
    )
    assert seen["z"] == pytest.approx(0.1, abs=0.015)
    assert seen["text"] == pytest.approx(0.5, abs=0.03)


def test_sampling_is_seeded_in_range_and_guidance_zero_is_unconditional():
    decoder = _decoder()

    def draw(text, z, **kw):
        return decoder.sample(text, z, generator=torch.Generator().manual_seed(0), **kw)

    a = draw(_text(0), _z(1))
    assert a.shape == (B, 3, R, R) and a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, draw(_text(0), _z(1)))
    torch.testing.assert_close(
        draw(_text(0), _z(1), guidance=0.0), draw(_text(5), _z(2), guidance=0.0)
    )
    assert not torch.allclose(
        draw(_text(0), _z(1), guidance=1.0), draw(_text(0), _z(2), guidance=1.0)
    )


def test_ddim_inversion_then_deterministic_sampling_reconstructs_the_image(monkeypatch):
    """The decoder's inversion path (guided model, inversion start, no clipping) retraces
    itself. A random-weight U-Net is no denoiser (its probability-flow ODE is chaotic), so
    the network is replaced by the exact denoiser of Gaussian data here; the trained decoder
    is checked on real images where it is shipped."""
    decoder, text, z = _decoder(), _text(), _z()
    ab = decoder.diffusion.alpha_bar.float()

    def gaussian_eps(x_t, t, **kw):  # x_0 ~ N(0, 0.5²): E[ε | x_t]
        a, b = ab[t].sqrt().view(-1, 1, 1, 1), (1 - ab[t]).sqrt().view(-1, 1, 1, 1)
        return b * x_t / (a**2 * 0.25 + b**2)

    monkeypatch.setattr(decoder, "denoise", gaussian_eps)
    torch.manual_seed(3)
    images = (torch.rand(B, 3, R, R) * 0.6 + 0.2).clamp(0, 1)
    x_T = decoder.invert(images, text, z, guidance=1.0, steps=50)
    start = decoder.inversion_start
    assert 0 < start < decoder.diffusion.T - 1
    back = decoder.sample(
        text, z, guidance=1.0, steps=50, eta=0.0, noise=x_T, clip_x0=False, t_start=start
    )
    assert (back - images).abs().max() < 1e-3
    other = decoder.sample(
        text, z, guidance=1.0, steps=50, eta=0.0, noise=torch.randn_like(x_T), t_start=start
    )
    assert (other - images).abs().mean() > 0.1


def test_text_encoder_started_from_clip_gives_clips_token_states():
    """`text_init = "clip"`: the decoder's own encoder starts as the frozen CLIP's text tower
    (causal, open_clip's blocks under torch's names), so its states are CLIP's on the caption's
    tokens; the stage's fit hook does it, and a tower of another shape is one clear error."""
    from unclip_repro.clip import Clip
    from unclip_repro.config import get_preset
    from unclip_repro.recipes import init_text_encoder

    torch.manual_seed(0)
    clip = Clip(get_preset("shapes-smoke").clip).eval()
    heads = clip.text_width // clip.cfg.head_width
    tower = {
        "text_width": clip.text_width,
        "text_layers": clip.cfg.text_layers,
        "text_heads": heads,
    }
    cfg = DecoderConfig(unet=UNET, text_init="clip", **tower)
    decoder = Decoder.from_clip_config(cfg, clip.cfg, R).eval()
    init_text_encoder(decoder, clip)
    text = clip.encode_text(["a small red circle on the left", "a blue square above a cross"])
    states, mask = decoder.read_caption(text.ids, text.mask)
    L = mask.shape[1]
    torch.testing.assert_close(
        states[mask], text.tokens[:, :L][mask], rtol=1e-4, atol=1e-5
    )  # padding aside: the causal tower never reads it for the caption's own tokens
    other = DecoderConfig(
        unet=UNET, text_init="clip", **{**tower, "text_layers": 1 + tower["text_layers"]}
    )
    with pytest.raises(ValueError, match="text_width, text_layers and text_heads"):
        init_text_encoder(Decoder.from_clip_config(other, clip.cfg, R), clip)
    with pytest.raises(ValueError, match="unknown text_init"):
        Decoder.from_clip_config(
            DecoderConfig(unet=UNET, text_layers=1, text_init="bert"), clip.cfg, R
        )
