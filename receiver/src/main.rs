//! `metahook-receiver`: receives Meta webhooks, verifies, normalizes and spools them.
//! The command line is [`metahook_receiver::cli`].

fn main() -> std::process::ExitCode {
    metahook_receiver::cli::main_with(std::env::args_os())
}
