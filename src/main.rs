fn main() -> std::process::ExitCode {
    recsys::cli::main()
}
