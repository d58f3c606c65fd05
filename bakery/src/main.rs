fn main() -> std::process::ExitCode {
    bakery::cli::main_from_iter(std::env::args_os())
}
