//! The Plug-and-Play pipeline's host-side pieces (see PNP-SPEC.md).

pub mod scheduler;
