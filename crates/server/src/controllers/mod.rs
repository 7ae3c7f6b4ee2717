//! The controllers: each a function of the cluster view and the clock returning effects, with
//! a thin shell that applies them.

pub mod liveness;
