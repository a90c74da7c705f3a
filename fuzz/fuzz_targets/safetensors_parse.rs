//! Arbitrary bytes as a safetensors file: parsing must end in `Ok` or an error
//! naming the file, never a panic or an allocation the bytes do not back.

#![no_main]

use std::path::Path;

use candle_core::Device;
use libfuzzer_sys::fuzz_target;
use replica_check::tensor_file::parse_safetensors;
use replica_check::Bundle;

fuzz_target!(|bytes: &[u8]| {
    let origin = Path::new("fuzz.safetensors");
    match parse_safetensors(bytes, origin, &Device::Cpu) {
        Ok(file) => {
            // Every tensor is backed by the input: no header may conjure more elements than bytes.
            let elements: usize = file.tensors.values().map(|t| t.elem_count()).sum();
            assert!(
                elements <= bytes.len() * 8,
                "{elements} elements from {} bytes",
                bytes.len()
            );
            if let Err(err) = Bundle::from_tensor_file(file, origin) {
                assert!(err.to_string().contains("fuzz.safetensors"), "{err}");
            }
        }
        Err(err) => assert!(err.to_string().contains("fuzz.safetensors"), "{err}"),
    }
});
