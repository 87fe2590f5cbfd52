//! Alert sinks. One sink per file, each with its own config.
pub mod jsonl;
