//! The `ragway` command: serve the gateway, or check a config.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use clap::{Parser, Subcommand};
use ragway::AppState;
use ragway::config::{Config, Env};

// mimalloc: the request path allocates many small, short-lived buffers; measured
// faster than the system allocator under load (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version, about = "OpenAI-compatible edge gateway")]
struct Cli {
    /// The config file (TOML). Without one, built-in defaults apply.
    #[arg(long, global = true, env = "RAGWAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve,
    /// Validate the config and print it, secrets redacted.
    CheckConfig,
    /// Add files (or every readable file under directories) to a tenant's documents.
    /// Each file is one document, its path the id: ingesting it again replaces it,
    /// or does nothing when it has not changed.
    Ingest(IngestArgs),
}

#[derive(clap::Args)]
struct IngestArgs {
    /// Files and directories (.txt, .md, .html, .json, .jsonl).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[arg(long)]
    tenant: String,
    /// The collection the documents join (default: retrieval.default_collection).
    #[arg(long)]
    collection: Option<String>,
    /// Send them to a running gateway instead of opening the store here (an
    /// embedded store is open in one process at a time).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// With --server: the bearer key (a client key of the tenant, or the admin key).
    #[arg(long, env = "RAGWAY_API_KEY", hide_env_values = true)]
    key: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref(), &Env::from_process()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::CheckConfig => {
            print!("{}", config.to_redacted_toml());
            ExitCode::SUCCESS
        }
        Command::Serve => serve(config),
        Command::Ingest(args) => ingest(config, args),
    }
}

fn ingest(config: Config, args: IngestArgs) -> ExitCode {
    let Some(retrieval) = config.retrieval.clone() else {
        eprintln!("ingest: the config has no [retrieval] section");
        return ExitCode::from(2);
    };
    let files = match ragway::ingest::collect(&args.paths) {
        Ok(files) if files.is_empty() => {
            eprintln!("ingest: no readable documents under the paths given");
            return ExitCode::from(2);
        }
        Ok(files) => files,
        Err(error) => {
            eprintln!("ingest: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ingest: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let collection = args
        .collection
        .unwrap_or_else(|| retrieval.default_collection.clone());
    runtime.block_on(async {
        let (to, store) = match args.server {
            Some(url) => (
                ragway::ingest::Destination::Gateway {
                    client: reqwest::Client::new(),
                    url,
                    key: args.key,
                },
                None,
            ),
            None => match AppState::open_corpus(&config).await {
                Ok(corpus) => {
                    let store = std::sync::Arc::clone(corpus.store());
                    (ragway::ingest::Destination::Store(corpus), Some(store))
                }
                Err(error) => {
                    eprintln!("ingest: {error}");
                    return ExitCode::FAILURE;
                }
            },
        };
        let bar = indicatif::ProgressBar::new(files.len() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} documents  {elapsed_precise}  {wide_msg}",
        ) {
            bar.set_style(style);
        }
        let summary = ragway::ingest::ingest(&files, &args.tenant, &collection, &to, &bar).await;
        bar.finish_and_clear();
        if let Some(store) = store {
            eprintln!("indexing…");
            if let Err(error) = store.finish().await {
                eprintln!("ingest: {error}");
                return ExitCode::FAILURE;
            }
        }
        println!("{}", summary.describe());
        match summary.failed.is_empty() {
            true => ExitCode::SUCCESS,
            false => ExitCode::FAILURE,
        }
    })
}

fn serve(config: Config) -> ExitCode {
    let _log_guard = ragway::telemetry::init_logging(&config.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "ragway stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let listen = config.server.listen;
    let grace = config.server.shutdown_grace;
    let state = AppState::from_config(config).await?;
    state.spawn_maintenance(std::time::Duration::from_secs(5));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(address = %listener.local_addr()?, "ragway listening");
    let draining = state.draining.clone();
    let shutdown = state.shutdown.clone();
    let tasks = state.tasks().clone();
    ragway::serve(listener, state, async move {
        shutdown_signal().await;
        draining.store(true, Ordering::Relaxed);
        shutdown.cancel();
        tracing::info!("shutting down: finishing open requests");
    })
    .await?;
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!(
            ?grace,
            "background work still running at the end of the grace period"
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
