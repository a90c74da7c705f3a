//! A minGPT-style character-level language model (Karpathy's `chargpt`), trained
//! with AdamW on fifteen of Shakespeare's sonnets (`data/sonnets.txt`, public
//! domain), then sampled.
//!
//!     cargo run --release --example mingpt_char
//!     cargo run --release --example mingpt_char -- --steps 500 --seed 7
//!
//! The model is [`replica::models::Gpt2`] (token and position embeddings, pre-norm
//! blocks, causal attention, GELU MLP, LM head tied to the token embedding) with
//! GPT-2's initialisation ([`Gpt2::init_weights`]), here 3 layers, 4 heads, 96 wide
//! over a 64-character context (347,520 parameters), trained from scratch as minGPT
//! trains it: AdamW (betas 0.9/0.95, weight decay 0.1 on the matrices of the linear
//! layers only; lr 2e-3, higher than minGPT's 5e-4 for this small model; replica's
//! [`FusedAdamW`], torch's update in one in-place pass per parameter), gradient
//! norm clipped to 1 (folded into that pass), dropout 0.1, batches of 16 random windows. The last tenth of
//! the text is held out. `--steps`, `--layers`, `--width`, `--heads`, `--lr-micro`
//! and `--seed` change the run.
//!
//! The unigram entropy of the training characters is the loss of a model that knows
//! only how often each character occurs; anything lower has learned context. A real
//! run of the defaults (release build, seed 1337, 400 steps, `CANDLE_NUM_THREADS=1
//! RAYON_NUM_THREADS=1` on a 2-core machine; 21 s, where the same run took 560 s with
//! candle_nn's AdamW, glibc's default allocator thresholds and the machine under load;
//! docs/training.md):
//!
//! ```text
//! 9353 characters (8417 train, 936 held out), vocabulary of 59
//! unigram entropy of the training characters: 3.107 nats (4.482 bits) per character
//! GPT: 3 layers, 4 heads, 96 wide, context 64: 347520 parameters; AdamW (lr 0.002), 400 steps of 16 windows
//!
//! step    40  train loss 2.865  held-out loss 2.503  (2 s)
//! step    80  train loss 2.452  held-out loss 2.436  (4 s)
//! step   120  train loss 2.389  held-out loss 2.386  (6 s)
//! step   160  train loss 2.341  held-out loss 2.359  (9 s)
//! step   200  train loss 2.286  held-out loss 2.377  (11 s)
//! step   240  train loss 2.264  held-out loss 2.320  (13 s)
//! step   280  train loss 2.210  held-out loss 2.273  (15 s)
//! step   320  train loss 2.169  held-out loss 2.236  (17 s)
//! step   360  train loss 2.104  held-out loss 2.202  (19 s)
//! step   400  train loss 2.061  held-out loss 2.176  (21 s)
//!
//! after 400 steps (21 s): loss on the training text 1.956 nats, held out 2.176 nats (first batch 4.095, unigram entropy 3.107)
//!
//! sample (temperature 0.8):
//!
//! Shall I compare thees,
//! Wik thing o rsthe the lorf he lof thines, brak aiongond mave thead:
//! Thart the das you I sicrof eas wit whis thot thon morn togh lou dinght blof ay,
//!     Think be whe what y thirng bes surom an searn thoonde,
//! ...
//! ```
//!
//! The loss starts at ln 59 = 4.08 (uniform guessing), passes the unigram entropy
//! (3.11) within the first 40 steps, and ends at 1.96 nats on the training text and
//! 2.18 on the held-out sonnets: 1.15 and 0.93 nats per character below the unigram
//! entropy. The sample has learned the layout (lines, capitals, indentation,
//! punctuation) and common words (`the`, `you`, `what`, `be`), not yet spelling.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use candle_core::{DType, Device, ModuleT, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use replica::blocks::{AdamWConfig, FusedAdamW};
use replica::models::generation::language_model_loss;
use replica::models::{Architecture, Gpt2, Gpt2Config};

const TEXT: &str = include_str!("../data/sonnets.txt");
const BLOCK: usize = 64;
const BATCH: usize = 16;

struct Args {
    steps: usize,
    seed: u64,
    sample_chars: usize,
    layers: usize,
    width: usize,
    heads: usize,
    lr: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        steps: 400,
        seed: 1337,
        sample_chars: 400,
        layers: 3,
        width: 96,
        heads: 4,
        lr: 2e-3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            it.next()
                .ok_or(format!("{name} needs a value"))?
                .parse()
                .map_err(|e| format!("{name}: {e}"))
        };
        match flag.as_str() {
            "--steps" => args.steps = number("--steps")? as usize,
            "--seed" => args.seed = number("--seed")?,
            "--sample-chars" => args.sample_chars = number("--sample-chars")? as usize,
            other => {
                return Err(format!(
                    "unknown argument `{other}` (use --steps N, --seed N, --sample-chars N)"
                ))
            }
        }
    }
    Ok(args)
}

/// xorshift64*: batches and samples without a dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The entropy (nats) of the character frequencies of `ids`.
fn unigram_entropy(ids: &[u32], vocab: usize) -> f64 {
    let mut counts = vec![0usize; vocab];
    for &id in ids {
        counts[id as usize] += 1;
    }
    let n = ids.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum()
}

/// `BATCH` random windows of `data`: inputs and the next characters, `[BATCH, BLOCK]`.
fn batch(data: &[u32], rng: &mut Rng, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let mut x = Vec::with_capacity(BATCH * BLOCK);
    let mut y = Vec::with_capacity(BATCH * BLOCK);
    for _ in 0..BATCH {
        let start = rng.below(data.len() - BLOCK - 1);
        x.extend_from_slice(&data[start..start + BLOCK]);
        y.extend_from_slice(&data[start + 1..start + BLOCK + 1]);
    }
    Ok((
        Tensor::from_vec(x, (BATCH, BLOCK), device)?,
        Tensor::from_vec(y, (BATCH, BLOCK), device)?,
    ))
}

/// The mean loss over the full windows of `data` (stride `BLOCK`), without dropout.
fn evaluate(model: &Gpt2, data: &[u32], device: &Device) -> candle_core::Result<f64> {
    let starts: Vec<usize> = (0..data.len() - BLOCK - 1).step_by(BLOCK).collect();
    let (mut total, mut windows) = (0.0, 0);
    for chunk in starts.chunks(BATCH) {
        let window = |offset: usize| -> Vec<u32> {
            chunk
                .iter()
                .flat_map(|&s| data[s + offset..s + offset + BLOCK].iter().copied())
                .collect()
        };
        let x = Tensor::from_vec(window(0), (chunk.len(), BLOCK), device)?;
        let y = Tensor::from_vec(window(1), (chunk.len(), BLOCK), device)?;
        let loss = language_model_loss(&model.forward(&x, None)?, &y)?.to_scalar::<f32>()? as f64;
        total += loss * chunk.len() as f64;
        windows += chunk.len();
    }
    Ok(total / windows.max(1) as f64)
}

/// Samples `n` characters after `prompt`, at temperature 0.8, cropping the context
/// to the last `BLOCK` characters as minGPT does.
fn sample(model: &Gpt2, prompt: &[u32], n: usize, rng: &mut Rng, device: &Device) -> candle_core::Result<Vec<u32>> {
    let mut ids = prompt.to_vec();
    for _ in 0..n {
        let context = &ids[ids.len().saturating_sub(BLOCK)..];
        let x = Tensor::new(context, device)?.unsqueeze(0)?;
        let logits = model.forward(&x, None)?.get(0)?.get(context.len() - 1)?;
        let probs = candle_nn::ops::softmax(&(logits / 0.8)?, D::Minus1)?.to_vec1::<f32>()?;
        let mut r = rng.unit() as f32;
        let mut next = probs.len() - 1;
        for (i, p) in probs.iter().enumerate() {
            if r < *p {
                next = i;
                break;
            }
            r -= p;
        }
        ids.push(next as u32);
    }
    Ok(ids)
}

fn progress(step: usize, steps: usize, loss: f64, started: Instant) {
    let width = 30;
    let done = width * step / steps.max(1);
    let rate = step as f64 / started.elapsed().as_secs_f64().max(1e-9);
    eprint!(
        "\r[{}{}] {step:>5}/{steps} loss {loss:.3}  {rate:.1} steps/s ",
        "=".repeat(done),
        " ".repeat(width - done)
    );
    let _ = std::io::stderr().flush();
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::Cpu;
    let chars: Vec<char> = TEXT.chars().collect::<BTreeSet<_>>().into_iter().collect();
    let index = |c: char| chars.binary_search(&c).expect("every character is in the vocabulary") as u32;
    let data: Vec<u32> = TEXT.chars().map(index).collect();
    let split = data.len() * 9 / 10;
    let (train, val) = (&data[..split], &data[split..]);
    let entropy = unigram_entropy(train, chars.len());
    println!(
        "{} characters ({} train, {} held out), vocabulary of {}",
        data.len(),
        train.len(),
        val.len(),
        chars.len()
    );
    println!(
        "unigram entropy of the training characters: {entropy:.3} nats ({:.3} bits) per character",
        entropy / std::f64::consts::LN_2
    );

    let config = Gpt2Config::new(chars.len(), BLOCK, args.width, args.layers, args.heads);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let model = Gpt2::new(&config, vb)?;
    Gpt2::init_weights(&varmap, &config)?;
    // minGPT decays only the weight matrices of linear layers, not biases, norms or embeddings.
    let (mut decayed, mut plain) = (Vec::new(), Vec::new());
    for (name, var) in varmap.data().lock().expect("varmap").iter() {
        let linear = name.ends_with(".weight") && (name.contains(".attn.") || name.contains(".mlp."));
        if linear { &mut decayed } else { &mut plain }.push(var.clone());
    }
    let count: usize = decayed.iter().chain(&plain).map(|v| v.elem_count()).sum();
    println!(
        "GPT: {} layers, {} heads, {} wide, context {BLOCK}: {count} parameters; AdamW (lr {}), {} steps of {BATCH} windows\n",
        config.n_layer, config.n_head, config.n_embd, args.lr, args.steps
    );
    // torch.optim.AdamW with two parameter groups, in one in-place pass per parameter.
    let adamw = AdamWConfig {
        lr: args.lr,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let mut optimizer = FusedAdamW::new(decayed, adamw)?;
    optimizer.add_param_group(plain, 0.0)?;

    let mut rng = Rng(args.seed.max(1));
    let started = Instant::now();
    let (mut first, mut recent) = (None, Vec::new());
    let report_every = (args.steps / 10).max(1);
    for step in 1..=args.steps {
        let (x, y) = batch(train, &mut rng, &device)?;
        let loss = language_model_loss(&model.forward_t(&x, true)?, &y)?;
        let grads = loss.backward()?;
        // torch.nn.utils.clip_grad_norm_(params, 1.0), folded into the update.
        optimizer.clip_and_step(&grads, 1.0)?;
        let loss = loss.to_scalar::<f32>()? as f64;
        first.get_or_insert(loss);
        recent.push(loss);
        if step % 10 == 0 || step == args.steps {
            progress(step, args.steps, loss, started);
        }
        if step % report_every == 0 || step == args.steps {
            let mean = recent.iter().sum::<f64>() / recent.len() as f64;
            recent.clear();
            let held_out = evaluate(&model, val, &device)?;
            eprint!("\r{:70}\r", "");
            println!(
                "step {step:>5}  train loss {mean:.3}  held-out loss {held_out:.3}  ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    let train_loss = evaluate(&model, train, &device)?;
    let val_loss = evaluate(&model, val, &device)?;
    println!(
        "\nafter {} steps ({:.0} s): loss on the training text {train_loss:.3} nats, held out {val_loss:.3} nats \
         (first batch {:.3}, unigram entropy {entropy:.3})",
        args.steps,
        started.elapsed().as_secs_f64(),
        first.unwrap_or(f64::NAN)
    );

    let prompt: Vec<u32> = "Shall I compare thee".chars().map(index).collect();
    let ids = sample(&model, &prompt, args.sample_chars, &mut rng, &device)?;
    let text: String = ids.iter().map(|&i| chars[i as usize]).collect();
    println!("\nsample (temperature 0.8):\n\n{text}");
    Ok(())
}

/// Keeps freed memory in the process (glibc): every step frees and allocates the same
/// tensors, and with glibc's defaults many come back as fresh pages that the OS faults
/// in and zeroes again. A binary's choice, not a library's (README, "Performance").
fn keep_freed_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's thresholds; called before any thread starts.
    unsafe {
        // 32 MiB is glibc's largest mmap threshold; freed memory is trimmed past 1 GiB only.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

fn main() -> ExitCode {
    keep_freed_pages();
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
