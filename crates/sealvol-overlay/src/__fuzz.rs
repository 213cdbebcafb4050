//! Fuzzing hooks (not API).
