//! Test support: views built from records.
