//! JSON has no NaN or infinity; reports must still carry them faithfully.
//! Finite values are plain numbers, the others the strings "NaN", "inf", "-inf".

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Repr {
    Number(f64),
    Text(String),
}

pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if value.is_finite() {
        serializer.serialize_f64(*value)
    } else if value.is_nan() {
        serializer.serialize_str("NaN")
    } else if *value > 0.0 {
        serializer.serialize_str("inf")
    } else {
        serializer.serialize_str("-inf")
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    match Repr::deserialize(deserializer)? {
        Repr::Number(value) => Ok(value),
        Repr::Text(text) => match text.as_str() {
            "NaN" => Ok(f64::NAN),
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            other => Err(de::Error::custom(format!(
                "expected a number, \"NaN\", \"inf\" or \"-inf\", got {other:?}"
            ))),
        },
    }
}
