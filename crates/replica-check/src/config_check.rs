//! A config is checked before anything is built from it: every value the component
//! cannot honour (zero heads, a width the heads do not divide, a NaN epsilon) is
//! refused by name, and so is a config that asks for more memory than the
//! [`MemoryBudget`]. A panic on a division by zero or an allocation that ends the
//! process is then never how a bad config shows.
//!
//! Every config type implements [`ConfigCheck`]; [`admit`] is the one place that
//! runs both checks. [`Bundle::config`](crate::Bundle::config) admits every config
//! a case reads, the models admit theirs when they read or build one.

use serde_json::Value;

use crate::budget::{Footprint, MemoryBudget, Workload};

/// What a config refuses, and what it costs.
pub trait ConfigCheck {
    /// Refuses a value the component cannot be built or run with: one line that
    /// names the field, what it must be and what it is.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    /// The memory the component built from this config needs on `work`: an upper
    /// bound within a small factor (see [`crate::budget`]). Called after [`validate`](Self::validate)
    /// accepted the config; computed with [`Size`](crate::budget::Size)'s checked arithmetic.
    fn footprint(&self, work: &Workload) -> Footprint;
}

/// Validates `config`, then refuses it when its footprint on `work` is over the
/// [current budget](MemoryBudget::current). The error is one line naming the field.
pub fn admit<C: ConfigCheck + ?Sized>(config: &C, work: &Workload) -> Result<(), String> {
    config.validate()?;
    config.footprint(work).check(MemoryBudget::current())
}

/// [`admit`] for a config read from `json`, whose spelling of the field the refusal keeps.
pub fn admit_read<C: ConfigCheck + ?Sized>(config: &C, work: &Workload, json: &Value) -> Result<(), String> {
    config.validate()?;
    config.footprint(work).check_in(MemoryBudget::current(), Some(json))
}

/// Configs read as several parts (a tuple, [`ConfigParts`](crate::ConfigParts)): each
/// part is validated, and the footprint is the parts' sum.
macro_rules! check_tuples {
    ($($part:ident),+) => {
        impl<$($part: ConfigCheck),+> ConfigCheck for ($($part,)+) {
            #[allow(non_snake_case)]
            fn validate(&self) -> Result<(), String> {
                let ($($part,)+) = self;
                $($part.validate()?;)+
                Ok(())
            }

            #[allow(non_snake_case)]
            fn footprint(&self, work: &Workload) -> Footprint {
                let ($($part,)+) = self;
                Footprint::NONE $(+ $part.footprint(work))+
            }
        }
    };
}
check_tuples!(A);
check_tuples!(A, B);
check_tuples!(A, B, C);
check_tuples!(A, B, C, D);

impl<T: ConfigCheck> ConfigCheck for Option<T> {
    fn validate(&self) -> Result<(), String> {
        self.as_ref().map_or(Ok(()), ConfigCheck::validate)
    }

    fn footprint(&self, work: &Workload) -> Footprint {
        self.as_ref().map_or(Footprint::NONE, |c| c.footprint(work))
    }
}

/// [`ConfigCheck`] for config parts that decide no sizes (flags, names, modes, an
/// offset that is checked where it is used): nothing to refuse beyond their types,
/// nothing allocated beyond what the component's other parts and inputs cost.
#[macro_export]
macro_rules! sizeless_config {
    ($($config:ty),+ $(,)?) => {
        $(impl $crate::ConfigCheck for $config {
            fn footprint(&self, _: &$crate::Workload) -> $crate::Footprint {
                $crate::Footprint::NONE
            }
        })+
    };
}

/// `field` must be at least 1.
pub fn positive(field: &str, value: usize) -> Result<(), String> {
    if value == 0 {
        return Err(format!("`{field}` must be positive, got 0"));
    }
    Ok(())
}

/// The first of `fields` that is 0, refused.
pub fn all_positive(fields: &[(&str, usize)]) -> Result<(), String> {
    fields.iter().try_for_each(|&(field, value)| positive(field, value))
}

/// `field` must divide evenly by `by` (named `by_field`), which must be positive.
pub fn divisible(field: &str, value: usize, by_field: &str, by: usize) -> Result<(), String> {
    positive(by_field, by)?;
    if !value.is_multiple_of(by) {
        return Err(format!("`{field}` {value} is not divisible by `{by_field}` {by}"));
    }
    Ok(())
}

/// A probability in `[0, 1)` (a dropout rate that keeps something).
pub fn probability(field: &str, p: f64) -> Result<(), String> {
    if !(0.0..1.0).contains(&p) {
        return Err(format!("`{field}` must be in [0, 1), got {p}"));
    }
    Ok(())
}

/// A drop rate in `[0, 1]` (dropout, stochastic depth: 1 drops everything).
pub fn drop_rate(field: &str, p: f64) -> Result<(), String> {
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("`{field}` must be in [0, 1], got {p}"));
    }
    Ok(())
}

/// A finite number of at least 0 (a norm's epsilon).
pub fn non_negative(field: &str, value: f64) -> Result<(), String> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(format!("`{field}` must be a finite number >= 0, got {value}"));
    }
    Ok(())
}

/// A finite number above 0 (a rotary base, a scale, a cap).
pub fn finite_positive(field: &str, value: f64) -> Result<(), String> {
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("`{field}` must be a finite number > 0, got {value}"));
    }
    Ok(())
}

/// A finite number (a layer-scale init, a scale that may be negative).
pub fn finite(field: &str, value: f64) -> Result<(), String> {
    if !value.is_finite() {
        return Err(format!("`{field}` must be a finite number, got {value}"));
    }
    Ok(())
}

/// A count that fits where it is used as a 32-bit number (positions, token ids).
pub fn at_most(field: &str, value: usize, max: u64) -> Result<(), String> {
    if value as u64 > max {
        return Err(format!("`{field}` must be at most {max}, got {value}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Size;

    struct Wide(usize);

    impl ConfigCheck for Wide {
        fn validate(&self) -> Result<(), String> {
            positive("width", self.0)
        }

        fn footprint(&self, work: &Workload) -> Footprint {
            Footprint::params(work.bytes(Size::field("width", self.0) * Size::field("width", self.0)))
        }
    }

    #[test]
    fn admit_validates_then_weighs() {
        let work = Workload::default();
        assert_eq!(admit(&Wide(0), &work).unwrap_err(), "`width` must be positive, got 0");
        assert!(admit(&Wide(16), &work).is_ok());
        let err = admit(&Wide(1 << 40), &work).unwrap_err();
        assert!(err.starts_with("config field `width` = 1099511627776 needs "), "{err}");
        let err = admit(&(Wide(16), Wide(0)), &work).unwrap_err();
        assert!(err.contains("`width` must be positive"), "{err}");
    }

    #[test]
    fn helpers_name_the_field_and_the_value() {
        assert_eq!(
            divisible("dim", 10, "heads", 4).unwrap_err(),
            "`dim` 10 is not divisible by `heads` 4"
        );
        assert_eq!(
            divisible("dim", 10, "heads", 0).unwrap_err(),
            "`heads` must be positive, got 0"
        );
        assert!(probability("p", f64::NAN).unwrap_err().contains("got NaN"));
        assert!(non_negative("eps", -1.0).is_err() && non_negative("eps", 0.0).is_ok());
        assert!(finite_positive("theta", f64::INFINITY).is_err());
        assert_eq!(at_most("n", 5, 4).unwrap_err(), "`n` must be at most 4, got 5");
    }
}
