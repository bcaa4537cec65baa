//! Trust boundaries (issue 14): each finding of the attack review, reproduced against a real
//! bitsd on loopback. One module per boundary; `docs/security.md` maps each row of the threat
//! model to the test that holds it.

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod hooks;
mod storage;
mod vdirs;
