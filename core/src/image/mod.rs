//! Firmware image formats Fieldpatch understands natively (MCUboot images, DFU files, SWUpdate
//! `.swu`, ESP application images and partition tables), parsed and checked before a byte is sent to a device. Parsers take bytes and never panic on hostile input; each format has its own
//! error enum saying what was wrong.

pub mod dfu_file;
pub mod esp;
pub mod mcuboot;
pub mod swu;
