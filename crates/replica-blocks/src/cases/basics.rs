//! (in progress)

use replica_check::Case;

pub fn cases() -> Vec<Case> {
    Vec::new()
}
