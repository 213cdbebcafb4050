//! The only module with `unsafe`: aws-lc's XTS binding and mlock/munlock.
