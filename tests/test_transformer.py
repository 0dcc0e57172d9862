"""The encoder–decoder Transformer: against torch.nn.Transformer with the same weights, and its decoding."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import vitkit
from vitkit.generate import beam_search, greedy
from vitkit.models.transformer import Memory, Transformer, TransformerConfig

D, H, FF = 32, 4, 64


def small(**kw) -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab=13, tgt_vocab=13, d_model=D, num_heads=H, d_ff=FF, encoder_layers=2,
                            decoder_layers=2, dropout=0.0, max_len=64, **kw)
    model = Transformer(cfg).eval()
    with torch.no_grad():  # biases and norms away from their trivial initial values
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def copy_into_torch(ours: Transformer, norm_first: bool) -> nn.Transformer:
    ref = nn.Transformer(D, H, len(ours.encoder), len(ours.decoder), FF, dropout=0.0, batch_first=True,
                         norm_first=norm_first).eval()
    if not norm_first:  # torch.nn.Transformer always ends each stack with a LayerNorm; the paper's post-LN has none
        ref.encoder.norm = ref.decoder.norm = None
    with torch.no_grad():
        for mine, theirs in zip(ours.encoder, ref.encoder.layers):
            theirs.self_attn.in_proj_weight.copy_(mine.attn.qkv.weight)
            theirs.self_attn.in_proj_bias.copy_(mine.attn.qkv.bias)
            theirs.self_attn.out_proj.load_state_dict(mine.attn.proj.state_dict())
            theirs.linear1.load_state_dict(mine.mlp.fc1.state_dict())
            theirs.linear2.load_state_dict(mine.mlp.fc2.state_dict())
            theirs.norm1.load_state_dict(mine.norm1.state_dict())
            theirs.norm2.load_state_dict(mine.norm2.state_dict())
        for mine, theirs in zip(ours.decoder, ref.decoder.layers):
            theirs.self_attn.in_proj_weight.copy_(mine.attn.qkv.weight)
            theirs.self_attn.in_proj_bias.copy_(mine.attn.qkv.bias)
            theirs.self_attn.out_proj.load_state_dict(mine.attn.proj.state_dict())
            theirs.multihead_attn.in_proj_weight.copy_(torch.cat([mine.cross_attn.q.weight, mine.cross_attn.kv.weight]))
            theirs.multihead_attn.in_proj_bias.copy_(torch.cat([mine.cross_attn.q.bias, mine.cross_attn.kv.bias]))
            theirs.multihead_attn.out_proj.load_state_dict(mine.cross_attn.proj.state_dict())
            theirs.linear1.load_state_dict(mine.mlp.fc1.state_dict())
            theirs.linear2.load_state_dict(mine.mlp.fc2.state_dict())
            for i in (1, 2, 3):
                getattr(theirs, f"norm{i}").load_state_dict(getattr(mine, f"norm{i}").state_dict())
        if norm_first:
            ref.encoder.norm.load_state_dict(ours.encoder_norm.state_dict())
            ref.decoder.norm.load_state_dict(ours.decoder_norm.state_dict())
    return ref


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_the_stacks_equal_torch_nn_transformer_with_the_same_weights_and_masks(norm_first):
    ours = small(norm_first=norm_first)
    ref = copy_into_torch(ours, norm_first)
    g = torch.Generator().manual_seed(1)
    src_len, tgt_len = torch.tensor([7, 4, 6]), torch.tensor([5, 5, 2])
    x, y = torch.randn(3, 7, D, generator=g), torch.randn(3, 5, D, generator=g)
    src_pad = torch.arange(7)[None] >= src_len[:, None]  # torch: True = padding
    tgt_pad = torch.arange(5)[None] >= tgt_len[:, None]
    with torch.no_grad():
        want = ref(x, y, tgt_mask=nn.Transformer.generate_square_subsequent_mask(5), src_key_padding_mask=src_pad,
                   tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad)
        memory = ours.encode_embedded(x, ~src_pad[:, None, None, :])
        got = ours.decode_embedded(y, Memory(memory, ~src_pad[:, None, None, :]), ~tgt_pad[:, None, None, :])
    real = ~tgt_pad  # torch's outputs at padded query positions are not defined the same way; compare the rest
    assert (got - want)[real].abs().max() <= 1e-5


def test_cached_decoding_equals_uncached_decoding():
    model = small()
    src = torch.randint(3, 13, (4, 9))
    memory = model.encode(src)
    tgt = torch.cat([torch.ones(4, 1, dtype=torch.long), torch.randint(3, 13, (4, 7))], dim=1)
    with torch.no_grad():
        full = model.decode(tgt, memory)
        cache = model.new_cache()
        steps = torch.cat([model.decode(tgt[:, t:t + 1], memory, cache) for t in range(tgt.shape[1])], dim=1)
    assert len(cache) == 8
    assert (full - steps).abs().max() <= 1e-5
    assert torch.equal(greedy(model, src, 12, cache=True), greedy(model, src, 12, cache=False))
    assert torch.equal(beam_search(model, src, 12, beam=3, cache=True), beam_search(model, src, 12, beam=3, cache=False))


def test_beam_width_one_is_greedy_decoding():
    model = small()
    src = torch.randint(3, 13, (6, 8))
    out = greedy(model, src, 15)
    assert torch.equal(beam_search(model, src, 15, beam=1, alpha=0.6), out)
    assert torch.equal(beam_search(model, src, 15, beam=1, alpha=0.0), out)


def test_padding_in_a_batch_changes_nothing_for_the_other_sequences():
    model = small()
    seqs = [torch.randint(3, 13, (n,)) for n in (9, 4, 6)]
    batch = torch.zeros(3, 9, dtype=torch.long)  # pad_id 0
    for i, s in enumerate(seqs):
        batch[i, :len(s)] = s
    together = greedy(model, batch, 10)
    beams = beam_search(model, batch, 10, beam=3)
    for i, s in enumerate(seqs):
        alone = greedy(model, s[None], 10)
        n = alone.shape[1]
        assert torch.equal(together[i, :n], alone[0]) and (together[i, n:] == 0).all()
        assert torch.equal(beams[i, :beam_search(model, s[None], 10, beam=3).shape[1]],
                           beam_search(model, s[None], 10, beam=3)[0])
        with torch.no_grad():
            m_alone = model.encode(s[None]).states[0]
            m_batch = model.encode(batch).states[i, :len(s)]
        assert (m_alone - m_batch).abs().max() <= 1e-5


def test_decoded_sequences_stop_at_eos_and_pad_after_it():
    model = small()
    with torch.no_grad():  # make EOS the likeliest token after a few steps: bias the generator
        model.generator.bias.zero_()
        model.generator.bias[2] = 5.0
    out = greedy(model, torch.randint(3, 13, (3, 5)), 20)
    for row in out:
        ends = (row == 2).nonzero()
        assert len(ends) >= 1
        first = int(ends[0])
        assert (row[first + 1:] == 0).all()


def test_the_registry_builds_the_paper_s_base_and_a_small_transformer():
    base = vitkit.model_config("transformer_base")
    assert (base.d_model, base.num_heads, base.d_ff, base.encoder_layers, base.decoder_layers, base.dropout) == \
        (512, 8, 2048, 6, 6, 0.1)
    with torch.device("meta"):
        model = vitkit.create_model("transformer_base")
    # the paper's base model: about 65M parameters with a shared 37k vocabulary (Table 3 reports 65M)
    n = sum(p.numel() for p in model.parameters())
    assert 60e6 < n < 66e6, n
    assert model.generator.weight is model.tgt_embed.weight is model.src_embed.weight
    small_model = vitkit.create_model("transformer_small")
    logits = small_model(torch.randint(3, 11, (2, 6)), torch.randint(3, 11, (2, 5)))
    assert logits.shape == (2, 5, 11)


def test_a_sequence_longer_than_the_sinusoid_table_is_refused():
    model = small()
    with pytest.raises(ValueError, match="longer than max_len 64"):
        model.encode(torch.randint(3, 13, (1, 65)))


def test_the_kv_cache_grows_past_its_buffer_and_reorders_rows_like_a_concatenation():
    from vitkit.layers import KVCache
    cache, ks, vs = KVCache(), [], []
    for step in range(40):  # past the first buffer (16) and its doubling (34)
        k, v = torch.randn(3, 2, 1 if step else 5, 4), torch.randn(3, 2, 1 if step else 5, 4)
        ks.append(k), vs.append(v)
        got_k, got_v = cache.append(k, v)
        assert torch.equal(got_k, torch.cat(ks, dim=-2)) and torch.equal(got_v, torch.cat(vs, dim=-2))
        if step == 20:  # beam search keeps rows 2, 0, 0
            index = torch.tensor([2, 0, 0])
            cache.select(index)
            ks, vs = [torch.cat(ks, dim=-2).index_select(0, index)], [torch.cat(vs, dim=-2).index_select(0, index)]
    assert len(cache) == 44
