//! Integration tests: one binary (one link step), each test against its own throwaway
//! PostgreSQL cluster started by `LocalPostgres`.

mod arch_break;
mod auth;
mod branch_faults;
mod branches;
mod cancel;
mod cancel_break;
mod cancel_break3;
mod cancel_review;
mod cancel_web;
mod cold_path;
mod cold_start;
mod compute_faults;
mod connector;
mod connector_break;
mod drivers;
mod drivers_break;
mod emulator;
mod lakebase;
mod lifecycle;
mod listener;
mod network;
mod proxy_fidelity;
mod replica_faults;
mod replicas;
mod restart;
mod review_faults;
mod rotation;
mod secrets;
mod settings;
mod shutdown;
mod sqlx;
mod stats;
mod support;
#[cfg(feature = "opentelemetry")]
mod telemetry;
mod test_servers;
mod tls;
mod token_faults;
mod transaction;
mod user_code;
mod user_faults;
mod users;
mod web;
mod worker;
mod workspace;
