fn main() -> std::process::ExitCode {
    probe_user::cli::main()
}
