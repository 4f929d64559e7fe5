//! Integration tests of the store: model-based property tests and durability behaviour.

mod crash;
mod filters;
mod model;
mod props;
mod reopen;
mod size;
