//! Should this failed request get a mulligan? Three independent questions:
//! - [`safety`]: could sending it again do harm?
//! - [`budget`]: can the platform afford another attempt right now?
//! - [`backoff`]: how long to wait between attempts?

pub mod backoff;
pub mod budget;
pub mod safety;

pub use backoff::Backoff;
pub use budget::Budget;
pub use safety::{decide, Decision, RequestFacts};
