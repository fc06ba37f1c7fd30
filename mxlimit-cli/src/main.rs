//! `mxlimit`: the operator's command line. Parses, connects, runs one command.

mod cli;
mod client;
mod commands;
mod duration;
mod export;
mod table;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let result = async {
        let mut admin = client::connect(&cli).await?;
        commands::run(&mut admin, cli.command, cli.json).await
    }
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable message with its causes, never a backtrace: this is an
            // operator's tool.
            eprintln!("mxlimit: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
