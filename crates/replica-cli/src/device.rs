//! `--device cpu|cuda:N`.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::error::CliError;

/// Where checks run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU (the default).
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal (`cuda` alone is `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("cpu") {
            return Ok(DeviceSpec::Cpu);
        }
        if text.eq_ignore_ascii_case("cuda") {
            return Ok(DeviceSpec::Cuda(0));
        }
        if let Some(ordinal) = text.strip_prefix("cuda:") {
            return ordinal
                .parse()
                .map(DeviceSpec::Cuda)
                .map_err(|_| format!("`{ordinal}` is not a GPU ordinal (cuda:0, cuda:1, ...)"));
        }
        Err(format!("unknown device `{text}`: use cpu or cuda:N"))
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device. Without the `cuda` feature a GPU is an input error that says how to get one.
    pub fn open(self) -> Result<Device, CliError> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(_) if !cfg!(feature = "cuda") => Err(CliError::new(format!(
                "--device {self}: this replica was built without CUDA; rebuild it with `cargo build -p replica-cli --features cuda` (needs the CUDA toolkit)"
            ))),
            DeviceSpec::Cuda(ordinal) => {
                Device::new_cuda(ordinal).map_err(|err| CliError::new(format!("--device {self}: {err}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(3)));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().unwrap_err().contains("cpu or cuda:N"));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        let err = DeviceSpec::Cuda(0).open().unwrap_err();
        assert!(err.message.contains("--features cuda"), "{err}");
    }
}
