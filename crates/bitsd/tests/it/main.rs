//! bitsd's integration tests, one binary: each module talks HTTP to a real `bitsd` process on
//! loopback (`common`), S3 ones to their own SeaweedFS, Azure ones to their own Azurite. A
//! server's environment is set for its process only (`Server::start_full`), never for this
//! one, so every test lives in this binary.
//! Engine behaviour that needs no process runs in-process in `crates/bits-server/tests/engine`.

#[path = "apps/axum_app.rs"]
mod app;
#[path = "../../../bits-server/tests/support/azurite.rs"]
mod azurite;
mod common;
#[path = "../../../bits-server/tests/support/seaweed.rs"]
mod seaweed;
#[path = "../../../bits-server/tests/support/seaweed_client.rs"]
mod seaweed_client;

mod admin;
mod azure;
mod boundaries;
mod capture_replay;
mod check_config;
mod checklist_create;
mod checklist_fragment;
mod checklist_generic;
mod checklist_lifecycle;
mod client_roundtrip;
mod concurrency_and_limits;
mod console;
mod crash_recovery;
mod disk_full;
mod downloads;
mod farm;
mod farm_bugs;
mod farm_consistency;
mod farm_downloads;
mod farm_memory;
mod farm_publish;
mod hooks;
mod hostile_input;
mod identity;
mod interop;
mod json_logs;
mod kerberos;
mod large_download;
mod large_upload;
mod ntlm;
mod operator_messages;
mod packaging;
mod reference_exchanges;
mod security;
mod slow_loris;
mod smoke;
mod upload_reply;
