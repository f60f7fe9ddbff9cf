//! `flumen`: run, check and draw pipeline files, and query what they wrote.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
