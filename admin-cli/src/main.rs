//! The `geppetto` binary; everything is in the library.

fn main() -> std::process::ExitCode {
    geppetto_cli::main()
}
