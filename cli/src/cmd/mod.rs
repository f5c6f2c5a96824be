//! One module per subcommand group; each is a thin layer over `fieldpatch-core`.

pub mod bundle;
pub mod dfu;
pub mod info;
pub mod keys;
