//! berth-plan
