//! The `ragway` command: serve the gateway, or check a config.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use clap::{Parser, Subcommand};
use ragway::AppState;
use ragway::config::{Config, Env, Part};

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
    /// Embed stored documents again with the configured embedder, from the text
    /// the store kept (after `[embeddings] model` changed): nothing is sent again.
    /// Stop the gateway first (an embedded store is open in one process at a
    /// time), or call `POST /admin/tenants/{tenant}/reindex` on a running one.
    Reindex {
        /// Only this tenant (the others stay stale: searched by keywords alone).
        /// Without it: every tenant whose vectors another embedder made.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Apply the audit database's migrations (the gateway also does at start-up).
    Migrate,
    /// The audit trail: verify its hash chains, export rows, apply retention.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Client keys in the key table (`[governance]`): what `/admin/keys` does,
    /// without a running gateway. Prints JSON; a new key is shown once.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a key for a tenant.
    Create(NewKeyArgs),
    /// Every key, or one tenant's.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    Show {
        id: String,
    },
    /// A new key for the same id; the old one stops working.
    Rotate {
        id: String,
    },
    /// The key stops working (it is kept, so audit rows still name it).
    Revoke {
        id: String,
    },
}

#[derive(clap::Args)]
struct NewKeyArgs {
    #[arg(long)]
    tenant: String,
    #[arg(long)]
    name: Option<String>,
    /// A model alias the key may use (`*` matches any run of characters); repeat
    /// it for more. None: every model.
    #[arg(long = "model", value_name = "PATTERN")]
    models: Vec<String>,
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<u64>,
    /// Tokens per minute.
    #[arg(long)]
    tpm: Option<u64>,
    /// Tokens per day.
    #[arg(long)]
    tpd: Option<u64>,
    /// Requests in flight at once.
    #[arg(long)]
    concurrency: Option<u64>,
    /// An amount to spend per --period.
    #[arg(long, requires = "period")]
    budget: Option<f64>,
    #[arg(long, value_parser = ["day", "week", "month"], requires = "budget")]
    period: Option<String>,
    /// When the key stops working, RFC 3339 (`2027-01-01T00:00:00Z`).
    #[arg(long)]
    expires_at: Option<String>,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute every instance's hash chain; report the first altered, inserted or
    /// missing row. Exits 1 when a chain is broken.
    Verify(TimeRange),
    /// Write rows to stdout, instance by instance in chain order.
    Export {
        #[command(flatten)]
        range: TimeRange,
        /// Only this tenant's rows.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
    },
    /// Remove rows past `audit.retention_days` now (the gateway does it hourly).
    Retain,
}

#[derive(clap::Args)]
struct TimeRange {
    /// From (inclusive): `2026-11-01` (UTC midnight), `2026-11-01T08:00:00Z`,
    /// `2026-11-01T16:00:00+08:00`, or an age such as `24h`, `7d`.
    #[arg(long)]
    since: Option<String>,
    /// To (exclusive), in the same forms.
    #[arg(long)]
    until: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Jsonl,
    Csv,
}

#[derive(clap::Args)]
struct IngestArgs {
    /// Files and directories: text (.txt), Markdown (.md), HTML (.html, .htm), JSON
    /// (.json, .jsonl) and PDF (.pdf).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Follow symbolic links met inside the directories, as long as they lead to a
    /// place inside the paths given (loops are walked once). Off: links are skipped
    /// and listed.
    #[arg(long)]
    follow_links: bool,
    /// The tenant whose documents these become. Without it: `default` when
    /// authentication is off (every caller is that tenant, as the gateway serves
    /// them); with --server, the tenant of the key given.
    #[arg(long)]
    tenant: Option<String>,
    /// The collection the documents join (default: retrieval.default_collection).
    #[arg(long)]
    collection: Option<String>,
    /// The character set of files that do not say (`gbk`, `gb18030`, `big5` …): a
    /// byte-order mark or an HTML page's `<meta charset>` still wins. Default: UTF-8.
    #[arg(long, value_name = "LABEL", value_parser = charset_label)]
    charset: Option<&'static encoding_rs::Encoding>,
    /// Send them to a running gateway instead of opening the store here (an
    /// embedded store is open in one process at a time).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// With --server: the bearer key (a client key of the tenant, or the admin key).
    #[arg(long, env = "RAGWAY_API_KEY", hide_env_values = true)]
    key: Option<String>,
}

fn main() -> ExitCode {
    // Before any connection to Postgres or Redis: see `tls::install_crypto_provider`.
    ragway::tls::install_crypto_provider();
    let cli = Cli::parse();
    // Each command checks the sections it reads: an auditor needs the audit
    // database's URL, not the provider keys.
    let part = match cli.command {
        Command::Serve | Command::CheckConfig => Part::Everything,
        Command::Migrate | Command::Audit(_) => Part::Audit,
        Command::Keys(_) => Part::Keys,
        Command::Ingest(_) | Command::Reindex { .. } => Part::Documents,
    };
    let config = match Config::load_part(cli.config.as_deref(), &Env::from_process(), part) {
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
        Command::Reindex { tenant } => reindex(config, tenant),
        Command::Migrate => audit_command(config, None),
        Command::Audit(command) => audit_command(config, Some(command)),
        Command::Keys(command) => keys_command(config, command),
    }
}

/// The commands' runtime; `None` (said on stderr) when the process cannot start
/// one.
fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new()
        .inspect_err(|error| eprintln!("cannot start the runtime: {error}"))
        .ok()
}

/// `keys …`, against the configured key table.
fn keys_command(config: Config, command: KeysCommand) -> ExitCode {
    use ragway::admit::grant::{NewKey, now_us};
    use ragway::admit::manage::{self, ManageError};
    use ragway::admit::store::KeyStore;
    let Some(governance) = config.governance else {
        eprintln!("the config has no [governance] section");
        return ExitCode::from(2);
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let show = |view: serde_json::Value| {
        println!(
            "{}",
            serde_json::to_string_pretty(&view).unwrap_or_default()
        );
        ExitCode::SUCCESS
    };
    let with_key = |(record, key): (ragway::admit::grant::KeyRecord, String)| {
        let mut view = record.view(now_us());
        view["key"] = key.into();
        view
    };
    runtime.block_on(async {
        let store = match KeyStore::open(governance.database.url()) {
            Ok(store) => store,
            Err(error) => {
                eprintln!("key table: {}", ragway::secret::scrub(&error.to_string()));
                return ExitCode::from(2);
            }
        };
        let result = match store.migrate().await {
            Err(error) => Err(ManageError::Store(error)),
            Ok(()) => match command {
                KeysCommand::Create(args) => {
                    let budget = args.budget.map(
                        |amount| serde_json::json!({ "amount": amount, "period": args.period }),
                    );
                    let new = serde_json::json!({
                        "tenant": args.tenant, "name": args.name, "models": args.models,
                        "limits": { "rpm": args.rpm, "tpm": args.tpm, "tpd": args.tpd,
                                    "concurrency": args.concurrency },
                        "budget": budget, "expires_at": args.expires_at,
                    });
                    match serde_json::from_value::<NewKey>(new) {
                        Ok(new) => manage::create(&store, new).await.map(with_key),
                        Err(error) => {
                            eprintln!("keys create: {error}");
                            return ExitCode::from(2);
                        }
                    }
                }
                KeysCommand::List { tenant } => match store.list(tenant.as_deref()).await {
                    Ok(keys) => {
                        let now = now_us();
                        Ok(keys.iter().map(|k| k.view(now)).collect())
                    }
                    Err(error) => Err(error.into()),
                },
                KeysCommand::Show { id } => match store.get(&id).await {
                    Ok(Some(key)) => Ok(key.view(now_us())),
                    Ok(None) => Err(ManageError::NoSuchKey(id)),
                    Err(error) => Err(error.into()),
                },
                KeysCommand::Rotate { id } => manage::rotate(&store, &id).await.map(with_key),
                KeysCommand::Revoke { id } => {
                    manage::revoke(&store, &id).await.map(|k| k.view(now_us()))
                }
            },
        };
        match result {
            Ok(view) => show(view),
            Err(error @ (ManageError::Invalid(_) | ManageError::NoSuchKey(_))) => {
                eprintln!("keys: {error}");
                ExitCode::from(2)
            }
            Err(error) => {
                eprintln!("keys: {}", ragway::secret::scrub(&error.to_string()));
                ExitCode::FAILURE
            }
        }
    })
}

/// `migrate` (no command) and `audit …`, against the configured audit database.
fn audit_command(config: Config, command: Option<AuditCommand>) -> ExitCode {
    let Some(audit) = config.audit else {
        eprintln!("the config has no [audit] section");
        return ExitCode::from(2);
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let store = match ragway::audit::open_store(&audit.database) {
            Ok(store) => store,
            Err(error) => {
                eprintln!("audit database: {error}");
                return ExitCode::from(2);
            }
        };
        if let Err(error) = store.migrate().await {
            eprintln!("audit database: {error}");
            return ExitCode::FAILURE;
        }
        let result = match command {
            None => {
                println!("audit database is up to date");
                Ok(ExitCode::SUCCESS)
            }
            Some(AuditCommand::Verify(range)) => match parse_range(&range) {
                Ok(range) => verify(store.as_ref(), range).await,
                Err(code) => return code,
            },
            Some(AuditCommand::Export {
                range,
                tenant,
                format,
            }) => match parse_range(&range) {
                Ok(range) => export(store.as_ref(), range, tenant.as_deref(), format).await,
                Err(code) => return code,
            },
            Some(AuditCommand::Retain) => match audit.retention {
                None => {
                    println!("retention is off (audit.retention_days = 0)");
                    Ok(ExitCode::SUCCESS)
                }
                Some(keep) => {
                    let now = ragway::audit::time::now_micros();
                    let cutoff = ragway::audit::time::before(now, keep);
                    store.retain(cutoff).await.map(|done| {
                        println!("{done}");
                        ExitCode::SUCCESS
                    })
                }
            },
        };
        result.unwrap_or_else(|error| {
            eprintln!("audit: {error}");
            ExitCode::FAILURE
        })
    })
}

fn parse_range(range: &TimeRange) -> Result<ragway::audit::store::Range, ExitCode> {
    let now = ragway::audit::time::now_micros();
    let parse = |text: &Option<String>| {
        text.as_deref()
            .map(|t| ragway::audit::time::parse(t, now))
            .transpose()
    };
    match (parse(&range.since), parse(&range.until)) {
        (Ok(since), Ok(until)) => Ok(ragway::audit::store::Range { since, until }),
        (Err(message), _) | (_, Err(message)) => {
            eprintln!("{message}");
            Err(ExitCode::from(2))
        }
    }
}

async fn verify(
    store: &dyn ragway::audit::store::AuditStore,
    range: ragway::audit::store::Range,
) -> Result<ExitCode, ragway::audit::store::StoreError> {
    let reports = ragway::audit::verify::verify(store, range).await?;
    if reports.is_empty() {
        println!("no audit rows");
    }
    for report in &reports {
        println!("{report}");
    }
    Ok(match reports.iter().any(|r| r.fault.is_some()) {
        true => ExitCode::FAILURE,
        false => ExitCode::SUCCESS,
    })
}

async fn export(
    store: &dyn ragway::audit::store::AuditStore,
    range: ragway::audit::store::Range,
    tenant: Option<&str>,
    format: ExportFormat,
) -> Result<ExitCode, ragway::audit::store::StoreError> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if let ExportFormat::Csv = format {
        write!(out, "{}", ragway::audit::export::csv_header())
            .map_err(|e| ragway::audit::store::StoreError::Other(e.to_string()))?;
    }
    let count = ragway::audit::verify::export(store, range, tenant, |row| match format {
        ExportFormat::Jsonl => writeln!(out, "{}", ragway::audit::export::json(row)),
        ExportFormat::Csv => write!(out, "{}", ragway::audit::export::csv_line(row)),
    })
    .await?;
    out.flush()
        .map_err(|e| ragway::audit::store::StoreError::Other(e.to_string()))?;
    eprintln!("{count} rows");
    Ok(ExitCode::SUCCESS)
}

fn ingest(config: Config, args: IngestArgs) -> ExitCode {
    let Some(retrieval) = config.retrieval.clone() else {
        eprintln!("ingest: the config has no [retrieval] section");
        return ExitCode::from(2);
    };
    let files = match ragway::ingest::collect(&args.paths, args.follow_links) {
        Ok(found) => {
            for (path, why) in &found.skipped {
                eprintln!("skipped {}: {why}", path.display());
            }
            if found.files.is_empty() {
                eprintln!("ingest: no readable documents under the paths given");
                return ExitCode::from(2);
            }
            found.files
        }
        Err(error) => {
            eprintln!("ingest: {error}");
            return ExitCode::from(2);
        }
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let collection = args
        .collection
        .unwrap_or_else(|| retrieval.default_collection.clone());
    let tenant = match ingest_tenant(&config, args.tenant, args.server.is_some()) {
        Ok(tenant) => tenant,
        Err(message) => {
            eprintln!("ingest: {message}");
            return ExitCode::from(2);
        }
    };
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
        let summary = ragway::ingest::ingest(
            &files,
            tenant.as_deref(),
            &collection,
            args.charset,
            &to,
            &bar,
        )
        .await;
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

fn reindex(config: Config, tenant: Option<String>) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let corpus = match AppState::open_corpus_switching(&config).await {
            Ok(corpus) => corpus,
            Err(error) => {
                eprintln!("reindex: {error}");
                return ExitCode::FAILURE;
            }
        };
        let tenants = match tenant {
            Some(tenant) => vec![tenant],
            None => match corpus.store().stale_tenants().await {
                Ok(stale) => stale,
                Err(error) => {
                    eprintln!("reindex: {error}");
                    return ExitCode::FAILURE;
                }
            },
        };
        if tenants.is_empty() {
            println!("every tenant's vectors are the configured embedder's: nothing to do");
        }
        let stop = tokio_util::sync::CancellationToken::new();
        for tenant in tenants {
            match corpus.reindex(&tenant, &stop).await {
                Ok(done) => println!(
                    "{}: {} documents, {} chunks embedded again",
                    done.tenant, done.documents, done.chunks
                ),
                Err(error) => {
                    eprintln!("reindex {tenant}: {error}");
                    return ExitCode::FAILURE;
                }
            }
        }
        eprintln!("indexing…");
        if let Err(error) = corpus.store().finish().await {
            eprintln!("reindex: {error}");
            return ExitCode::FAILURE;
        }
        ExitCode::SUCCESS
    })
}

fn charset_label(label: &str) -> Result<&'static encoding_rs::Encoding, String> {
    ragway::retrieve::extract::charset::of_label(label)
}

/// The tenant `ingest` writes for, as the gateway would decide it: the one named;
/// else `default` with authentication off; else, with --server, the key's own
/// (`None`: the gateway decides). Writing the store directly with authentication
/// on needs a name: the store holds every tenant's documents.
fn ingest_tenant(
    config: &Config,
    named: Option<String>,
    to_server: bool,
) -> Result<Option<String>, String> {
    let named = named.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
    match named {
        Some(tenant) => Ok(Some(tenant)),
        None if config.auth.tenants.is_empty() => Ok(Some("default".to_owned())),
        None if to_server => Ok(None),
        None => Err(format!(
            "authentication is on: name the tenant with --tenant (the config's tenants: {})",
            config
                .auth
                .tenants
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn serve(config: Config) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let _log_guard = ragway::telemetry::init_logging(&config.log);
    let traces_guard = config.tracing.as_ref().and_then(|settings| {
        ragway::telemetry::traces::start(settings)
            .map_err(|error| tracing::error!(%error, "traces are not exported"))
            .ok()
    });
    let result = runtime.block_on(run(config));
    // What traces are queued are sent, within the export timeout.
    drop(traces_guard);
    // Work on blocking threads that nothing waits for any more (a document's
    // extraction whose client left) must not hold the exit: the runtime is not
    // given time to wait for it.
    runtime.shutdown_timeout(std::time::Duration::ZERO);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "ragway stopped");
            ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM or Ctrl-C, then exits within `server.shutdown_grace_secs`:
/// open requests and streams drain (closed when their share of the grace is up),
/// background work and ingestion are stopped, and the audit trail writes what it
/// holds in the time kept for it.
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
    let signalled = std::sync::Arc::new(std::sync::OnceLock::new());
    let signal_time = std::sync::Arc::clone(&signalled);
    ragway::serve(listener, state.clone(), async move {
        shutdown_signal().await;
        let _ = signal_time.set(tokio::time::Instant::now());
        draining.store(true, Ordering::Relaxed);
        shutdown.cancel();
        tracing::info!("shutting down: finishing open requests");
    })
    .await?;
    let exit_by = *signalled.get_or_init(tokio::time::Instant::now) + grace;
    let audit_reserve = state.audit_reserve();
    tasks.close();
    if tokio::time::timeout_at(exit_by - audit_reserve, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "background work still running at the end of the grace period"
        );
    }
    state
        .finish_audit(exit_by.saturating_duration_since(tokio::time::Instant::now()))
        .await;
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
