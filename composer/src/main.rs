fn main() -> std::process::ExitCode {
    composer::cli::main_from_iter(std::env::args_os())
}
