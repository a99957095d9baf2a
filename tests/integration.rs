//! The one integration-test binary: the gateway on a real socket, against a fake
//! provider on loopback.

mod support;

mod api;
mod architecture;
mod audit;
mod bad_input;
mod cache;
mod choices;
mod completions;
mod config;
mod console;
mod cors;
mod deploy;
mod governance;
mod hedge;
mod hostile;
mod limits;
mod live_asr;
mod local;
mod messages;
mod openai_sdk;
mod pii;
mod privacy;
mod providers;
mod python_sdk;
mod rerank;
mod resilience;
mod responses;
mod resume;
mod retrieval;
mod routing;
mod store;
mod store_server;
mod tls_config;
mod tls_postgres;
mod tls_redis;
mod traces;
mod voice;
