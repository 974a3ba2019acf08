//! `omendb`: serve the database, or print the effective configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use omendb_server::{Config, Server, telemetry};

/// mimalloc rather than the system allocator: it backs its memory with transparent huge pages,
/// so a random point read over the cached pages and memtables no longer misses the TLB as well
/// as the cache, and it allocates the engine's small per-read buffers faster (measured in
/// docs/benchmarks.md, "Huge pages, the allocator and shared page buffers").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// OmenDB: a database for ordered, integer-keyed data with a learned primary index.
#[derive(Parser)]
#[command(name = "omendb", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Opens the database and serves the client API and the admin listener until SIGTERM or
    /// SIGINT.
    Serve(Overrides),
    /// Configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Prints the effective configuration (defaults, file, environment, flags) as TOML.
    Print(Overrides),
}

/// Flags; each overrides the file and the environment.
#[derive(Args)]
struct Overrides {
    /// A TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The local data directory (`storage.path`).
    #[arg(long)]
    data: Option<String>,
    /// A backend URL for segments and manifests (`storage.url`), e.g. `s3://bucket/prefix`.
    #[arg(long)]
    storage_url: Option<String>,
    /// The client API's address (`server.listen`).
    #[arg(long)]
    listen: Option<String>,
    /// The admin listener's address (`server.admin_listen`).
    #[arg(long)]
    admin_listen: Option<String>,
    /// The log filter (`log.level`).
    #[arg(long)]
    log_level: Option<String>,
    /// Any other setting, as `section.key=value` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

impl Overrides {
    fn load(&self) -> Result<Config, String> {
        let mut pairs: Vec<(String, String)> = [
            ("storage.path", &self.data),
            ("storage.url", &self.storage_url),
            ("server.listen", &self.listen),
            ("server.admin_listen", &self.admin_listen),
            ("log.level", &self.log_level),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.clone().map(|v| (key.to_owned(), v)))
        .collect();
        for setting in &self.set {
            let (key, value) = setting
                .split_once('=')
                .ok_or_else(|| format!("--set {setting:?}: expected section.key=value"))?;
            pairs.push((key.trim().to_owned(), value.trim().to_owned()));
        }
        let pairs: Vec<(&str, String)> =
            pairs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        Config::load(self.config.as_deref(), &pairs).map_err(|e| e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(overrides) => overrides.load().and_then(serve),
        Command::Config {
            command: ConfigCommand::Print(overrides),
        } => overrides.load().and_then(|config| {
            let text = config.to_toml().map_err(|e| e.to_string())?;
            #[allow(clippy::print_stdout)] // printing the configuration is this command's job
            {
                print!("{text}");
            }
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("omendb: {err}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> Result<(), String> {
    let telemetry = telemetry::init(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    let served = runtime.block_on(async {
        let server = Server::bind(config).await.map_err(|e| format!("{e:#}"))?;
        server
            .run(shutdown_signal())
            .await
            .map_err(|e| format!("{e:#}"))
    });
    // The database is closed by now. What still runs is cut rather than waited for: a CPU
    // profile's sampling thread would hold the exit for the rest of its minute.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    telemetry.shutdown();
    served
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                // Without a SIGTERM handler only SIGINT stops the server gracefully.
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = interrupt => {},
            () = terminate => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
