//! Boundaries: storage.

#[allow(unused_imports)]
use crate::common::*;
