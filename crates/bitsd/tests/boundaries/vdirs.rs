//! Boundaries: vdirs.

#[allow(unused_imports)]
use crate::common::*;
