//! Sources: each turns the outside world into observations stamped with their own event time
//! (`crate::detect::Stamped`). `live` is the running kernel programs.
pub mod live;
