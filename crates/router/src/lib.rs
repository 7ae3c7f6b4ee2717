//! berth-router
