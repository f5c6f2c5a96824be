//! Firmware image formats Fieldpatch reads natively.

pub mod dfu_file;
