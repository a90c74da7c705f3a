//! A reference bundle loaded from disk. The input is `header JSON, 0x00, data
//! section`: the target writes the 8-byte length prefix itself, so mutations of
//! the header (metadata, keys, shapes, offsets) reach the bundle checks instead
//! of breaking the framing. Seeds are committed fixtures in that form.

#![no_main]

use std::path::PathBuf;

use candle_core::Device;
use libfuzzer_sys::fuzz_target;
use replica_check::Bundle;

fn scratch() -> PathBuf {
    std::env::temp_dir().join(format!("replica-fuzz-bundle-{}.safetensors", std::process::id()))
}

fuzz_target!(|input: &[u8]| {
    let split = input.iter().position(|&b| b == 0).unwrap_or(input.len());
    let (header, data) = (&input[..split], input.get(split + 1..).unwrap_or_default());
    let mut bytes = Vec::with_capacity(8 + input.len());
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(data);
    let path = scratch();
    std::fs::write(&path, &bytes).expect("write the scratch file");
    match Bundle::load(&path, &Device::Cpu) {
        Ok(bundle) => {
            // A loaded bundle lists what it holds; reading every named tensor back must work.
            for ns in replica_check::Namespace::ALL {
                for name in bundle.names(ns) {
                    bundle.get(ns, name).expect("a listed tensor is present");
                }
            }
        }
        Err(err) => assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}"),
    }
});
