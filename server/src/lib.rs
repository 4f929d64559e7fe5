//! placeholder during bring-up
pub mod applier;
pub mod config;
pub mod errors;
pub mod member;
pub mod metrics;
pub mod node;
pub mod validate;
pub mod watch_hub;
pub mod lessor;
