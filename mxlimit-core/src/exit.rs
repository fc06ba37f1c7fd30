//! How mxlimit's binaries end: success, or one line with the error and its causes and
//! exit status 1, never a backtrace (whatever `RUST_BACKTRACE` says): an operator
//! reads it.

use std::process::ExitCode;

/// `program: error: cause: cause` on stderr for an error (`{:#}`: anyhow's chain).
pub fn code<E: std::fmt::Display>(program: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
