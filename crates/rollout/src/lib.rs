//! berth-rollout
