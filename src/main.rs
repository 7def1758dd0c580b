//! The `dpskit` command: argument parsing lives in the library (`dpskit::cli`); this file only
//! hands over the process.
fn main() -> std::process::ExitCode {
    dpskit::cli::main()
}
