//! Dtype names: the `dtype` a bundle's metadata records (torch's names) and the
//! short names people type (`f32`, `bf16`), read by one parser.

use candle_core::DType;

use crate::{Bundle, Error, Result};

/// The floating-point dtype called `name`: torch's name (`float16`, `bfloat16`,
/// `float32`, `float64`), its short form (`f16`, `bf16`, `f32`, `f64`) or torch's
/// alias (`half`, `float`, `double`), in any case.
pub fn parse_dtype(name: &str) -> std::result::Result<DType, String> {
    Ok(match name.to_lowercase().as_str() {
        "f16" | "float16" | "half" => DType::F16,
        "bf16" | "bfloat16" => DType::BF16,
        "f32" | "float32" | "float" => DType::F32,
        "f64" | "float64" | "double" => DType::F64,
        _ => return Err(format!("unknown dtype `{name}` (use f16, bf16, f32 or f64)")),
    })
}

impl Bundle {
    /// The dtype the reference ran in: the metadata's `dtype`, read by [`parse_dtype`].
    /// A component is built in it, and its default tolerance is this dtype's.
    pub fn dtype(&self) -> Result<DType> {
        parse_dtype(&self.metadata().dtype)
            .map_err(|message| Error::file(self.origin(), format!("metadata: {message}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_names_short_names_and_aliases_agree() {
        for (names, dtype) in [
            (["float16", "f16", "HALF"], DType::F16),
            (["bfloat16", "bf16", "BF16"], DType::BF16),
            (["float32", "f32", "float"], DType::F32),
            (["float64", "F64", "double"], DType::F64),
        ] {
            for name in names {
                assert_eq!(parse_dtype(name), Ok(dtype), "{name}");
            }
        }
        assert!(parse_dtype("int64").unwrap_err().starts_with("unknown dtype `int64`"));
    }
}
