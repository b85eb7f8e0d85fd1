//! Track and run one-time data migrations exactly once
#![deny(missing_docs)]
