//! Greedy generation from checkpoint files, as `examples/generate.rs` does it:
//! the tiny GPT-2 fixture as a reference bundle, and the same weights written out
//! the way HF publishes GPT-2 (`GPT2Model` names without `transformer.`, `Conv1D`
//! weights `[in, out]`, the causal-mask buffers, `config.json` beside it).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use replica_check::{write_safetensors, Bundle, Namespace};
use replica_models::generation::{generate_greedy, GenerateOptions};
use replica_models::{Gpt2, LoadCheckpoint};
use replica_suite::fixtures_dir;

fn reference() -> (Bundle, Vec<u32>, Vec<u32>) {
    let bundle = Bundle::load(fixtures_dir().join("models/gpt2_generate.safetensors"), &Device::Cpu).unwrap();
    let ids = |t: &Tensor| -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|x| x as u32)
            .collect()
    };
    let prompt = ids(bundle.input("0").unwrap());
    let expected = ids(bundle.output("0").unwrap());
    (bundle, prompt, expected)
}

fn generate(model: &Gpt2, prompt: &[u32], new_tokens: usize, use_cache: bool) -> Vec<u32> {
    let mut options = GenerateOptions::greedy(new_tokens);
    options.use_cache = use_cache;
    let mut streamed = Vec::new();
    let tokens = generate_greedy(model, prompt, options, |t| streamed.push(t)).unwrap();
    assert_eq!(&tokens[prompt.len()..], streamed, "every new token is streamed once");
    tokens
}

#[test]
fn the_fixture_bundle_generates_what_hf_generated() {
    let (bundle, prompt, expected) = reference();
    let model = Gpt2::from_checkpoint(bundle.origin(), None, DType::F32, &Device::Cpu).unwrap();
    let new_tokens = expected.len() - prompt.len();
    assert_eq!(new_tokens, 20);
    assert_eq!(generate(&model, &prompt, new_tokens, true), expected);
    assert_eq!(generate(&model, &prompt, new_tokens, false), expected);
}

#[test]
fn a_hf_style_checkpoint_directory_generates_the_same() {
    let (bundle, prompt, expected) = reference();
    let dir = std::env::temp_dir().join(format!("replica-gpt2-checkpoint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // As `GPT2Model.save_pretrained` writes it: no `transformer.` prefix, no lm_head,
    // and the old causal-mask buffers.
    let mut tensors: Vec<(String, Tensor)> = bundle
        .namespace(Namespace::Param)
        .into_iter()
        .filter(|(name, _)| name != "lm_head.weight")
        .map(|(name, t)| (name.trim_start_matches("transformer.").to_string(), t))
        .collect();
    let mask = Tensor::ones((1, 1, 32, 32), DType::U8, &Device::Cpu).unwrap();
    tensors.push(("h.0.attn.bias".into(), mask.clone()));
    tensors.push(("h.1.attn.bias".into(), mask));
    let checkpoint = dir.join("model.safetensors");
    write_safetensors(
        &checkpoint,
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        HashMap::from([("format".to_string(), "pt".to_string())]),
        true,
    )
    .unwrap();
    std::fs::write(dir.join("config.json"), bundle.metadata().config.to_string()).unwrap();

    let model = Gpt2::from_checkpoint(&checkpoint, None, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(generate(&model, &prompt, expected.len() - prompt.len(), true), expected);

    let err = Gpt2::from_checkpoint(dir.join("missing.safetensors"), None, DType::F32, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("missing.safetensors"), "{err}");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let err = Gpt2::from_checkpoint(&checkpoint, None, DType::F32, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("no GPT-2 config"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cached_and_uncached_logits_agree_step_by_step() {
    let (bundle, prompt, _) = reference();
    let model = Gpt2::from_checkpoint(bundle.origin(), None, DType::F32, &Device::Cpu).unwrap();
    let ids = Tensor::new(prompt.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let full = model.forward(&ids, None).unwrap();
    let mut cache = replica_models::generation::CausalLm::new_cache(&model);
    let mut steps = Vec::new();
    for i in 0..prompt.len() {
        let one = ids.narrow(1, i, 1).unwrap();
        steps.push(model.forward(&one, Some(&mut cache)).unwrap());
    }
    let stepped = Tensor::cat(&steps, 1).unwrap();
    replica_check::assert_close(
        "logits, one token at a time",
        &stepped,
        &full,
        replica_check::Tolerance::default(),
    );
}
