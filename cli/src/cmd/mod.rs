//! One module per subcommand group; each is a thin layer over `fieldpatch-core`.

pub mod info;
pub mod sync;
