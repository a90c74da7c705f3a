//! Weight maps built from arbitrary rules (any pattern, replacement, split
//! dimension and sizes) applied to arbitrary tensor names and shapes, then fed
//! to a model that asks for every mapped name: `Ok` or a clean error, never a panic.

#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use arbitrary::Arbitrary;
use candle_core::{DType, Device, Tensor};
use libfuzzer_sys::fuzz_target;
use replica_check::WeightMap;

#[derive(Arbitrary, Debug)]
enum RuleInput {
    Ignore(String),
    Rename(String, String),
    Transpose(String),
    Split {
        pattern: String,
        dim: usize,
        parts: Vec<String>,
    },
    SplitSized {
        pattern: String,
        dim: usize,
        parts: Vec<(String, usize)>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    rules: Vec<RuleInput>,
    to_f16: bool,
    lenient: bool,
    /// Source tensors: a name and up to four small dimensions.
    tensors: Vec<(String, Vec<u8>)>,
    /// How the model's request differs from the mapped shape (0: it asks for that shape).
    skew: u8,
}

fuzz_target!(|input: Input| {
    let mut map = WeightMap::new();
    for rule in &input.rules {
        map = match rule {
            RuleInput::Ignore(p) => map.ignore(p),
            RuleInput::Rename(p, r) => map.rename(p, r),
            RuleInput::Transpose(p) => map.transpose(p),
            RuleInput::Split { pattern, dim, parts } => {
                let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
                map.split(pattern, *dim, &parts)
            }
            RuleInput::SplitSized { pattern, dim, parts } => {
                let parts: Vec<(&str, usize)> = parts.iter().map(|(p, n)| (p.as_str(), *n)).collect();
                map.split_sized(pattern, *dim, &parts)
            }
        };
    }
    if input.to_f16 {
        map = map.dtype(DType::F16);
    }
    if input.lenient {
        map = map.lenient();
    }
    let mut source = BTreeMap::new();
    for (name, dims) in input.tensors.iter().take(16) {
        let dims: Vec<usize> = dims.iter().take(4).map(|&d| usize::from(d % 9)).collect();
        let tensor = Tensor::zeros(dims, DType::F32, &Device::Cpu).expect("a small tensor");
        source.insert(name.clone(), tensor);
    }
    let origin = Path::new("fuzz.safetensors");
    let mapped = match map.apply(source, origin) {
        Ok(mapped) => mapped,
        Err(err) => {
            assert!(err.to_string().contains("fuzz.safetensors"), "{err}");
            return;
        }
    };
    let wanted: Vec<(String, Vec<usize>)> = mapped
        .tensors()
        .iter()
        .map(|(name, t)| {
            let mut dims = t.dims().to_vec();
            if let Some(first) = dims.first_mut() {
                *first += usize::from(input.skew % 3);
            }
            (name.clone(), dims)
        })
        .collect();
    let built = mapped.build(DType::F32, &Device::Cpu, |vb| {
        for (name, dims) in &wanted {
            vb.get(dims.as_slice(), name)?;
        }
        Ok(())
    });
    if let Err(err) = built {
        assert!(err.to_string().contains("fuzz.safetensors"), "{err}");
    }
});
