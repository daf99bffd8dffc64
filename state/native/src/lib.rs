//! The engine's compiled parts, imported from Python as `state._native`.
//!
//! Each component is plain Rust in its own module, tested with `cargo test`; the `python`
//! feature (on by default) wraps it for Python in [`python`].

mod allocator;
pub mod bookkeeping;
pub mod btyd;
pub mod crossing;
pub mod customer_step;
pub mod decision;
pub mod dedupe;
pub mod envelopes;
pub mod erasure;
pub mod event_scan;
pub mod features;
pub mod fire;
pub mod identity_pass;
pub mod inline;
pub mod links;
pub mod model_inputs;
pub mod names;
pub mod order_lines;
pub mod recommend;
pub mod recommend_bytes;
pub mod rule_program;
pub mod sample;
pub mod shards;
pub mod timer_heap;
pub mod timestamps;
pub mod touch;

#[cfg(feature = "python")]
mod python;
