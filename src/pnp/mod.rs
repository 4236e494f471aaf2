//! Plug-and-Play translation (PNP-SPEC.md): the DDIM scheduler, the feature
//! store and the injected sampling loop.

pub mod pipeline;
pub mod scheduler;
pub mod store;
