"""Tiny random models of many transformers families, built from configs in milliseconds (no
download), each with the character tokenizer of `raintools.testing`. Sliding windows are set
shorter than any prompt the tests use (WINDOW tokens), so a path that ignores the window differs.

`FAMILIES[name] = (model_type, config overrides)`; `build(name)` returns a `LanguageModel`.
"""

from __future__ import annotations

import torch

WINDOW = 7
CONTEXT = 4096          # the character-level judging prompt is ~2,000 tokens

_LLAMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=CONTEXT)
_GEMMA3N = dict(_LLAMA, num_hidden_layers=4, head_dim=8, sliding_window=WINDOW,
                layer_types=["sliding_attention", "full_attention"] * 2, altup_num_inputs=2,
                laurel_rank=4, hidden_size_per_layer_input=4, vocab_size_per_layer_input=128,
                activation_sparsity_pattern=[0.95, 0.0, 0.0, 0.0])
_GEMMA4 = dict(_LLAMA, num_hidden_layers=4, head_dim=8, global_head_dim=16, sliding_window=WINDOW,
               layer_types=["sliding_attention", "full_attention"] * 2,
               hidden_size_per_layer_input=4, vocab_size_per_layer_input=128)

FAMILIES: dict[str, tuple[str, dict]] = {
    # rotary, grouped-query attention
    "llama": ("llama", dict(_LLAMA)),
    "qwen3": ("qwen3", dict(_LLAMA, head_dim=8)),
    "olmo2": ("olmo2", dict(_LLAMA)),
    "phi3": ("phi3", dict(_LLAMA)),
    # multi-query attention
    "granite": ("granite", dict(_LLAMA, num_key_value_heads=1)),
    # multi-head latent attention (DeepSeek V3): the cache holds each layer's compressed latent as
    # its keys and the shared rotary key as its values, two different head sizes; routed experts
    "deepseek_v3": ("deepseek_v3", dict(_LLAMA, num_key_value_heads=4, kv_lora_rank=16,
                                        q_lora_rank=None, qk_rope_head_dim=4, qk_nope_head_dim=8,
                                        v_head_dim=6, n_routed_experts=4, n_shared_experts=1,
                                        moe_intermediate_size=16, num_experts_per_tok=2, n_group=2,
                                        topk_group=1, first_k_dense_replace=1)),
    # layers without positions (NoPE): SmolLM3's no_rope_layers
    "smollm3": ("smollm3", dict(_LLAMA, no_rope_layers=[1, 0])),
    # sliding windows: on every layer (Mistral, Starcoder2), on some layers (Qwen2's
    # max_window_layers, Gemma 2/3's layer_types), with soft-capping (Gemma 2)
    "mistral": ("mistral", dict(_LLAMA, sliding_window=WINDOW)),
    "starcoder2": ("starcoder2", dict(_LLAMA, sliding_window=WINDOW)),
    "qwen2-swa": ("qwen2", dict(_LLAMA, use_sliding_window=True, sliding_window=WINDOW,
                                max_window_layers=1)),
    "gemma2": ("gemma2", dict(_LLAMA, head_dim=8, sliding_window=WINDOW, query_pre_attn_scalar=8,
                              attn_logit_softcapping=5.0, final_logit_softcapping=3.0)),
    "gemma3": ("gemma3_text", dict(_LLAMA, num_hidden_layers=3, head_dim=8, sliding_window=WINDOW,
                                   query_pre_attn_scalar=8,
                                   layer_types=["sliding_attention", "full_attention",
                                                "sliding_attention"])),
    "cohere2": ("cohere2", dict(_LLAMA, sliding_window=WINDOW,
                                layer_types=["sliding_attention", "full_attention"])),
    # attention sinks (a learned logit per head in every softmax), alternating sliding and full
    # layers, routed experts
    "gpt_oss": ("gpt_oss", dict(_LLAMA, head_dim=8, num_local_experts=4, num_experts_per_tok=2,
                                sliding_window=WINDOW,
                                layer_types=["sliding_attention", "full_attention"])),
    # Llama 4: chunked attention on the rotary layers, NoPE layers whose queries are scaled by
    # their index in the cache (attention temperature tuning, in steps of floor_scale tokens: 8,192
    # in the real models, shorter than the prompts here); and without chunking
    "llama4": ("llama4_text", dict(_LLAMA, head_dim=8, intermediate_size_mlp=64,
                                   num_local_experts=2, num_experts_per_tok=1,
                                   attention_chunk_size=WINDOW, no_rope_layers=[1, 0],
                                   floor_scale=4)),
    "llama4-nochunk": ("llama4_text", dict(_LLAMA, head_dim=8, intermediate_size_mlp=64,
                                           num_local_experts=2, num_experts_per_tok=1,
                                           attention_chunk_size=None, no_rope_layers=[1, 0],
                                           floor_scale=4)),
    # partial rotary
    "phi": ("phi", dict(_LLAMA, partial_rotary_factor=0.5)),
    "gpt_neox": ("gpt_neox", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, rotary_pct=0.25,
                                  max_position_embeddings=CONTEXT)),
    "stablelm": ("stablelm", dict(_LLAMA, partial_rotary_factor=0.25)),
    "gptj": ("gptj", dict(n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=CONTEXT)),
    # absolute learned positions
    "gpt2": ("gpt2", dict(n_embd=32, n_layer=2, n_head=4, n_positions=CONTEXT)),
    "gpt_bigcode": ("gpt_bigcode", dict(n_embd=32, n_layer=2, n_head=4, n_positions=CONTEXT,
                                        multi_query=True)),
    "opt": ("opt", dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                        word_embed_proj_dim=32, max_position_embeddings=CONTEXT)),
    # Falcon: rotary + multi-query, and the ALiBi variant
    "falcon": ("falcon", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              multi_query=True, alibi=False, max_position_embeddings=CONTEXT)),
    # GPT-Neo: local-attention layers (attention_layers, window_size) that transformers' layer
    # types do not name, their window applied by key index
    "gpt_neo": ("gpt_neo", dict(hidden_size=32, num_layers=2, num_heads=4, window_size=WINDOW,
                                attention_types=[[["global", "local"], 1]],
                                max_position_embeddings=CONTEXT)),
    # ALiBi
    "falcon-alibi": ("falcon", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    multi_query=True, alibi=True, max_position_embeddings=CONTEXT)),
    "bloom": ("bloom", dict(hidden_size=32, n_layer=2, n_head=4)),
    "mpt": ("mpt", dict(d_model=32, n_layers=2, n_heads=4, expansion_ratio=2, max_seq_len=CONTEXT)),
    # recurrent and hybrid
    "mamba": ("mamba", dict(hidden_size=32, state_size=4, num_hidden_layers=2, expand=2,
                            conv_kernel=4)),
    "jamba": ("jamba", dict(_LLAMA, num_hidden_layers=2, attn_layer_period=2, attn_layer_offset=1,
                            expert_layer_period=2, expert_layer_offset=1, num_experts=2,
                            num_experts_per_tok=1, mamba_d_state=4, mamba_d_conv=4,
                            mamba_expand=2, mamba_dt_rank=4)),
    "recurrent_gemma": ("recurrent_gemma", dict(hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=4,
                                                num_key_value_heads=1, lru_width=32,
                                                attention_window_size=WINDOW,
                                                block_types=["recurrent", "attention"])),
    "falcon_h1": ("falcon_h1", dict(_LLAMA, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8,
                                    mamba_d_state=4, mamba_d_conv=4, mamba_n_groups=1,
                                    mamba_chunk_size=16)),
    "qwen3_next": ("qwen3_next", dict(_LLAMA, head_dim=8, num_experts=2, num_experts_per_tok=1,
                                      moe_intermediate_size=32, shared_expert_intermediate_size=32,
                                      linear_num_value_heads=2, linear_num_key_heads=2,
                                      linear_key_head_dim=8, linear_value_head_dim=8,
                                      layer_types=["linear_attention", "full_attention"])),
    # short-convolution layers (LFM2), Mamba 2 layers with routed experts (Granite 4), Mamba 2
    # layers with rotary attention layers (Bamba), with a shared attention block (Zamba 2)
    "lfm2": ("lfm2", dict(_LLAMA, block_multiple_of=16, layer_types=["conv", "full_attention"])),
    "granitemoehybrid": ("granitemoehybrid", dict(_LLAMA, num_local_experts=2, num_experts_per_tok=1,
                                                  shared_intermediate_size=32,
                                                  layer_types=["mamba", "attention"],
                                                  mamba_n_heads=4, mamba_d_head=16,
                                                  mamba_d_state=4, mamba_chunk_size=16)),
    "bamba": ("bamba", dict(_LLAMA, attn_layer_indices=[1], mamba_n_heads=4, mamba_d_head=16,
                            mamba_d_state=4, mamba_chunk_size=16)),
    "zamba2": ("zamba2", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=4,
                              layers_block_type=["mamba", "hybrid"], mamba_d_state=4,
                              n_mamba_heads=4, chunk_size=16, adapter_rank=4,
                              max_position_embeddings=CONTEXT)),
    # KV sharing between layers (Gemma 3n: the last layers reuse the keys and values of earlier
    # ones, their cache layers hold none), with AltUp, per-layer inputs and sparse activations
    "gemma3n": ("gemma3n_text", dict(_GEMMA3N, num_kv_shared_layers=2)),
    # and without KV sharing: AltUp, per-layer inputs and sparse activations on the packed route
    "gemma3n-noshare": ("gemma3n_text", dict(_GEMMA3N, num_kv_shared_layers=0)),
    # a sparse-attention indexer choosing which keys each query sees (DeepSeek V3.2: its cache keeps
    # the indexer's keys too), multi-head latent attention; the indexer keeps fewer keys than a
    # prompt. With 2 indexer heads of 8 dimensions, keys tie at a zero score (ReLU) and which of
    # them top-k keeps depends on the sequence's length: the model's own forward then changes with
    # later tokens; 8 heads of 16 avoid these ties.
    "deepseek_v32": ("deepseek_v32", dict(_LLAMA, num_key_value_heads=4, kv_lora_rank=16,
                                          q_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=8,
                                          v_head_dim=6, head_dim=4, n_routed_experts=4,
                                          n_shared_experts=1, moe_intermediate_size=16,
                                          num_experts_per_tok=2, n_group=2, topk_group=1,
                                          first_k_dense_replace=1, index_topk=WINDOW,
                                          index_head_dim=16, index_n_heads=8)),
    # lightning (linear) attention layers with softmax attention layers (MiniMax), Kimi Delta
    # Attention layers with latent attention layers (Kimi Linear)
    "minimax": ("minimax", dict(_LLAMA, head_dim=8, num_local_experts=2, num_experts_per_tok=1,
                                block_size=4, layer_types=["linear_attention", "full_attention"])),
    "kimi_linear": ("kimi_linear", dict(_LLAMA, num_key_value_heads=4, kv_lora_rank=16,
                                        qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=6,
                                        moe_intermediate_size=16, num_local_experts=4,
                                        num_experts_per_tok=2, linear_head_dim=8,
                                        linear_num_heads=4,
                                        layer_types=["linear_attention", "full_attention"])),
    # two attention sublayers per decoder layer (each its own cache layer), latent attention,
    # zero-computation experts (LongCat-Flash)
    "longcat_flash": ("longcat_flash", dict(hidden_size=32, num_layers=2, num_attention_heads=4,
                                            num_key_value_heads=4, max_position_embeddings=CONTEXT,
                                            ffn_hidden_size=64, q_lora_rank=8, kv_lora_rank=16,
                                            qk_nope_head_dim=8, qk_rope_head_dim=4, head_dim=4,
                                            v_head_dim=6, moe_topk=2, n_routed_experts=4,
                                            zero_expert_num=2, expert_ffn_hidden_size=16)),
    # sliding layers with rotary, full layers without (EXAONE 4), sliding and full layers (OLMo 3)
    "exaone4": ("exaone4", dict(_LLAMA, num_hidden_layers=3, sliding_window=WINDOW,
                                sliding_window_pattern=3)),
    "olmo3": ("olmo3", dict(_LLAMA, sliding_window=WINDOW,
                            layer_types=["sliding_attention", "full_attention"])),
    # sinusoidal absolute positions (XGLM)
    # dynamic mask attention: a learned per-key score added to the attention, each query keeping
    # its top `keep_window_size` keys once it sees more (README: ties there depend on the pass);
    # below that length, as here, a packed tree is exact
    "doge": ("doge", dict(_LLAMA, keep_window_size=CONTEXT)),
    "xglm": ("xglm", dict(d_model=32, ffn_dim=64, num_layers=2, attention_heads=4,
                          max_position_embeddings=CONTEXT)),
    # a parallel attention + MLP block, qk-norm, a logit scale (Cohere); partial rotary with
    # queries, keys and values interleaved in mp_num groups (CodeGen)
    "cohere": ("cohere", dict(_LLAMA, logit_scale=0.5, use_qk_norm=True)),
    "codegen": ("codegen", dict(n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=CONTEXT,
                                n_ctx=CONTEXT)),
    # routed attention experts sharing one KV (JetMoE's mixture of attention heads)
    "jetmoe": ("jetmoe", dict(hidden_size=32, num_hidden_layers=2, num_key_value_heads=2,
                              kv_channels=8, intermediate_size=32, num_local_experts=4,
                              num_experts_per_tok=2, max_position_embeddings=CONTEXT)),
    # routed experts with a sliding window on every layer (Mixtral)
    "mixtral": ("mixtral", dict(_LLAMA, num_local_experts=4, num_experts_per_tok=2,
                                sliding_window=WINDOW)),
    # Gemma 4 (text): KV sharing; without it, full layers of another head size whose keys are
    # their values (attention_k_eq_v), routed experts beside the MLP
    "gemma4": ("gemma4_text", dict(_GEMMA4, num_kv_shared_layers=2)),
    "gemma4-noshare": ("gemma4_text", dict(_GEMMA4, attention_k_eq_v=True, enable_moe_block=True,
                                           num_experts=4, top_k_experts=2,
                                           moe_intermediate_size=16)),
    # MiMo-V2-Flash: attention sinks, sliding and full layers with their own rotary settings
    # (partial), values of another head size than keys; Diff Transformer's differential attention
    "mimo_v2_flash": ("mimo_v2_flash", dict(_LLAMA, head_dim=8, v_head_dim=6, sliding_window=WINDOW,
                                            layer_types=["full_attention", "sliding_attention"],
                                            n_routed_experts=4, num_experts_per_tok=2,
                                            moe_intermediate_size=16)),
    "diffllama": ("diffllama", dict(_LLAMA)),
}


# What each family must get (raintools.routes): a packed token tree wherever it reproduces the
# model's forward, one batch row per candidate for ALiBi, chunked attention and Llama 4's
# temperature tuning, the reference engine without a KV cache. The rows families map to what their
# route's reason names: the static rule, not the self-check (its trees are far shorter than a
# real model's 8,192-token chunks and temperature steps).
# reference families map to what their reason names beyond the layer types
REASONS = {"gemma3n": "reuse another layer's keys and values",
           "gemma4": "reuse another layer's keys and values",
           "deepseek_v32": "sparse-attention indexer"}
ROWS = {"falcon-alibi": "ALiBi", "bloom": "position ids", "mpt": "ALiBi", "llama4": "chunked",
        "llama4-nochunk": "temperature tuning", "gpt_neo": "local-attention"}
RECURRENT = {"mamba", "jamba", "recurrent_gemma", "falcon_h1", "qwen3_next", "lfm2",
             "granitemoehybrid", "bamba", "zamba2", "gemma3n", "deepseek_v32", "minimax",
             "kimi_linear", "gemma4"}
SLIDING = {"mistral", "starcoder2", "qwen2-swa", "gemma2", "gemma3", "cohere2", "gpt_oss",
           "exaone4", "olmo3", "mixtral", "gemma3n-noshare",
           "gemma4-noshare", "mimo_v2_flash"}


def expected_route(name: str) -> str:
    return "rows" if name in ROWS else "reference" if name in RECURRENT else "packed"


def build(name: str, seed: int = 0, chat: bool = False, attn: str | None = None, **config):
    """A `LanguageModel` of family `name` with random weights (float32, eval mode); `config`
    overrides its config fields."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from raintools.models import LanguageModel
    from raintools.testing import char_tokenizer

    model_type, overrides = FAMILIES[name]
    tok = char_tokenizer(chat=chat)
    kwargs = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    kwargs.update(overrides)
    kwargs.update(config)
    cfg = AutoConfig.for_model(model_type, **kwargs)
    if attn is not None:
        cfg._attn_implementation = attn
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    return LanguageModel(model, tok, name=f"tiny-{name}-{seed}")
