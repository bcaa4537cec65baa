//! Boundaries: hooks.

#[allow(unused_imports)]
use crate::common::*;
