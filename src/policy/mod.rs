//! Should this failed attempt get a mulligan? Two independent questions:
//! - [`safety`]: could sending it again do harm?
//! - [`budget`]: can the platform afford another attempt right now?

pub mod budget;
pub mod safety;

pub use budget::Budget;
pub use safety::{decide, Decision, RequestFacts};
