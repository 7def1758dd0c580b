//! The `dpskit` command: a thin clap binary over the product library (`dpskit-factory`) and,
//! with the `rehearsal` feature (default), the rehearsal tools (`dpskit-rehearsal`). Errors
//! become `anyhow` here, at the edge, and leave as exit codes: 0 ok, 1 a check found
//! problems, 2 bad input.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
