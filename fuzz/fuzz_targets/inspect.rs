//! `replica inspect` on arbitrary bytes in a file, in each output format. The
//! report goes to stdout, which the target points at /dev/null once.

#![no_main]

use std::path::PathBuf;
use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use replica_cli::args::InspectArgs;
use replica_cli::inspect;
use replica_cli::output::Format;

fn silence_stdout() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .expect("open /dev/null");
        // SAFETY: dup2 on two open descriptors; stdout now writes to /dev/null.
        unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), libc::STDOUT_FILENO) };
    });
}

fuzz_target!(|input: &[u8]| {
    silence_stdout();
    let Some((&selector, bytes)) = input.split_first() else {
        return;
    };
    let format = [Format::Text, Format::Json, Format::Markdown][selector as usize % 3];
    let file = std::env::temp_dir().join(format!("replica-fuzz-inspect-{}.safetensors", std::process::id()));
    std::fs::write(&file, bytes).expect("write the scratch file");
    let args = InspectArgs {
        file: PathBuf::from(&file),
    };
    if let Err(err) = inspect::run(&args, format) {
        assert!(err.message.contains(&*file.to_string_lossy()), "{}", err.message);
    }
});
