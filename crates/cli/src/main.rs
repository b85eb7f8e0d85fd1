//! The `waymark` command-line tool (coming).

fn main() {}
