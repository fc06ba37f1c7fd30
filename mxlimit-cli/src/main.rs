//! `mxlimit`: the operator's command line. Parses, connects, runs one command.

mod cli;
mod client;
mod commands;
mod duration;
mod export;
mod table;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    let mut admin = client::connect(&cli).await?;
    commands::run(&mut admin, cli.command, cli.json).await
}
