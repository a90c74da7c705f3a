//! Temporary files removed when the process is interrupted: a SIGINT or SIGTERM
//! during a long write must not leave a hidden `.name.tmp` behind.
//!
//! The handler only unlinks paths prepared beforehand as C strings (unlink is
//! async-signal-safe) and then re-raises the signal with its default action, so
//! the process still ends the way the signal asks.

use std::ffi::CString;
use std::path::Path;
use std::sync::Mutex;

/// While alive, `path` is removed if SIGINT or SIGTERM arrives.
pub struct RemoveOnSignal {
    #[cfg(unix)]
    slot: Option<usize>,
}

/// How many temporary files can be pending at once (one per concurrent write).
const SLOTS: usize = 16;

#[cfg(unix)]
mod imp {
    use super::*;
    use std::sync::atomic::{AtomicPtr, Ordering};
    use std::sync::Once;

    pub(super) static PENDING: [AtomicPtr<libc::c_char>; SLOTS] =
        [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS];
    pub(super) static CLAIM: Mutex<()> = Mutex::new(());
    static INSTALL: Once = Once::new();

    extern "C" fn on_signal(signal: libc::c_int) {
        for slot in &PENDING {
            let path = slot.load(Ordering::SeqCst);
            if !path.is_null() {
                // SAFETY: the pointer came from CString::into_raw and stays valid
                // until the slot is cleared; unlink is async-signal-safe.
                unsafe { libc::unlink(path) };
            }
        }
        // SAFETY: restoring the default action and re-raising are async-signal-safe.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
    }

    pub(super) fn install() {
        INSTALL.call_once(|| {
            for signal in [libc::SIGINT, libc::SIGTERM] {
                // SAFETY: a plain handler for two signals whose default is to terminate;
                // one installed by the embedding program first is left in place.
                unsafe {
                    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                    let previous = libc::signal(signal, handler);
                    if previous != libc::SIG_DFL && previous != libc::SIG_ERR {
                        libc::signal(signal, previous);
                    }
                }
            }
        });
    }
}

impl RemoveOnSignal {
    /// Registers `path` for removal until the value is dropped.
    pub fn new(path: &Path) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            use std::sync::atomic::Ordering;
            imp::install();
            let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
                return Self { slot: None };
            };
            let _claim = imp::CLAIM.lock().unwrap_or_else(|p| p.into_inner());
            let free = imp::PENDING.iter().position(|s| s.load(Ordering::SeqCst).is_null());
            if let Some(i) = free {
                imp::PENDING[i].store(c_path.into_raw(), Ordering::SeqCst);
            }
            Self { slot: free }
        }
        #[cfg(not(unix))]
        {
            let _ = path;
            Self {}
        }
    }
}

impl Drop for RemoveOnSignal {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(i) = self.slot {
            use std::sync::atomic::Ordering;
            let path = imp::PENDING[i].swap(std::ptr::null_mut(), Ordering::SeqCst);
            if !path.is_null() {
                // SAFETY: this slot's pointer came from CString::into_raw above.
                drop(unsafe { CString::from_raw(path) });
            }
        }
    }
}
