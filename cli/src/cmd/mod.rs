//! One module per subcommand group; each is a thin layer over `fieldpatch-core`.

pub mod device;
pub mod info;
