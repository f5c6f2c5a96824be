//! `fieldpatch info`: the version and the local data directory, and where it came from.

use std::process::ExitCode;

pub fn run(json: bool) -> anyhow::Result<ExitCode> {
    let info = fieldpatch_core::app_info()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!("fieldpatch {}", info.version);
        println!("data directory: {}", info.data_dir.display());
    }
    Ok(ExitCode::SUCCESS)
}
