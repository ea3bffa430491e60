//! `chat-loadgen`: see `e2e::loadgen`. Prints a one-line JSON summary on stdout.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = e2e::loadgen::Cli::parse();
    // One thread: the generator is pinned to one core, the gateway to the other.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chat-loadgen: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(e2e::loadgen::run(cli)) {
        Ok(summary) => {
            println!("{summary}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chat-loadgen: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
