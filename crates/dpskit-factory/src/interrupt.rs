//! Ctrl-C, the one way every command stops: the first Ctrl-C (or SIGTERM on Unix; Ctrl-Break
//! or closing the console on Windows) sets a flag that work in progress polls, so boards in
//! the middle of a write finish and the ledger stays exact; a second one ends the process
//! (exit 130). Blocking and async commands alike wait on the same flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static WOKEN: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

/// Installs the handler (once per process) and returns the flag it sets.
///
/// Fails only if something else in the process already owns the Ctrl-C handler.
pub fn install() -> Result<&'static AtomicBool, InstallError> {
    INSTALLED
        .get_or_init(|| {
            ctrlc::set_handler(|| {
                if INTERRUPTED.swap(true, Ordering::SeqCst) {
                    std::process::exit(130);
                }
                let _guard = WOKEN.0.lock().unwrap_or_else(|p| p.into_inner());
                WOKEN.1.notify_all();
            })
            .map_err(|e| e.to_string())
        })
        .clone()
        .map(|()| &INTERRUPTED)
        .map_err(InstallError)
}

/// The Ctrl-C handler could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the Ctrl-C handler: {0}")]
pub struct InstallError(String);

/// True once Ctrl-C was pressed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Blocks the calling thread until Ctrl-C (installs the handler if needed). From async code,
/// call it through `spawn_blocking`.
pub fn wait() -> Result<(), InstallError> {
    install()?;
    let mut guard = WOKEN.0.lock().unwrap_or_else(|p| p.into_inner());
    while !interrupted() {
        guard = WOKEN.1.wait(guard).unwrap_or_else(|p| p.into_inner());
    }
    Ok(())
}
