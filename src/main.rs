//! The `mulligan` binary: everything lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    mulligan::cli::main()
}
