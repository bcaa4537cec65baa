//! Engine tests that need no bitsd process: the engine and router in this process over a temp
//! dir, with a manual clock (see `harness`). Black-box tests of what the process does
//! (signals, crashes, TLS, the cleanup task, farms) stay in `crates/bitsd/tests`.

mod harness;
mod lifecycle;
