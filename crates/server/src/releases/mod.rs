//! Releases: the deploy and rollback rules, as service functions of parsed input and the
//! shared state, returning domain results and [`ReleaseError`]s. `http::releases` parses a
//! request, calls one of these and answers; nothing here knows HTTP.
//!
//! - [`plan`]      — the plan as the server shows, identifies and summarises it (pure).
//! - [`deploy`]    — plan against the live release, check policy, store release N (and its
//!   rollout, supersessions and retirements) in one transaction.
//! - [`retention`] — which releases a new one retires, and their deletion with their pins.
//! - [`rollback`]  — which release a rollback returns to; the rollback itself.
//! - [`history`]   — the retained releases, newest first.
//! - [`remove`]    — `berth stack rm`: a release without services, kept in the history.
//!
//! Decisions are read from the live view ([`crate::live`]); a write waits until the view has
//! it before answering, so the caller's next request sees it.

pub mod deploy;
mod error;
pub mod history;
pub mod plan;
pub mod remove;
pub mod retention;
pub mod rollback;

pub use deploy::{deploy, plan, Start};
pub use error::ReleaseError;
pub use history::history;
pub use remove::remove;
pub use rollback::rollback;

#[cfg(test)]
mod tests;
