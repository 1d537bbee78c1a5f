//! The `kiln` binary; everything it does lives in `kiln::cli`.

fn main() -> std::process::ExitCode {
    kiln::cli::main()
}
