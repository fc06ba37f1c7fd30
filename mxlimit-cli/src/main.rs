//! `mxlimit`: the operator's command line. Parses, connects, runs one command.

mod cli;
mod client;
mod clock;
mod commands;
mod duration;
mod export;
mod import;
mod seed;
mod table;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let result = if let cli::Command::ImportLog {
        files,
        by,
        limit,
        ipv4_prefix,
        ipv6_prefix,
        since,
        until,
        seed,
        origin,
    } = &cli.command
    {
        // Old logs are read here; the limiter is asked only to be seeded.
        let o = import::Options {
            by: *by,
            limit: *limit,
            ipv4_prefix: *ipv4_prefix,
            ipv6_prefix: *ipv6_prefix,
            range: import::Range::new(*since, *until),
        };
        async {
            // Asked first: a limiter out of reach, or credentials it refuses, are said
            // before the reading.
            let seeder = match seed {
                true => Some(seed::Seeder::ready(&cli, origin.clone()).await?),
                false => None,
            };
            import::run(files, &o, cli.json, seeder).await
        }
        .await
    } else {
        async {
            let mut admin = client::connect(&cli).await?;
            commands::run(&mut admin, cli.command, cli.json).await
        }
        .await
    };
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
