//! `fieldpatch device --esp PORT[@BAUD][?reset=...] info | image upload FILE`: an ESP32-family
//! device in its ROM serial bootloader.
//!
//! Thin: each command is a call into the facade's ESP jobs ([`fieldpatch_core::device`]), which
//! write their own visit-log events. A bundle goes through the session's gate with the device's
//! inventory record (`--device ID`, `--devices FILE`); a bare image only with
//! `--allow-unverified`, recorded. An ESP flash that wrote and MD5-checked everything ends
//! unverified (the ROM loader cannot see the application): exit 0; a refused or failed one exits 3.

use super::device::{DeviceCommand, ImageCommand};
use anyhow::{Context, bail};
use fieldpatch_core::bundle::container::looks_like_bundle;
use fieldpatch_core::device::DEFAULT_APP_OFFSET;
use fieldpatch_core::flash::{FlashOptions, FlashOutcome};
use fieldpatch_core::plan::DeviceAddress;
use std::process::ExitCode;

/// The address `--esp` names: `PORT[@BAUD][?reset=..&chip=..]`, or a whole `esp:` address.
pub fn address(text: &str) -> anyhow::Result<DeviceAddress> {
    let full = if text.starts_with("esp:") { text.to_string() } else { format!("esp:{text}") };
    Ok(full.parse()?)
}

/// A flash offset: `0x10000` or `65536`.
fn offset(text: &str) -> anyhow::Result<u32> {
    let t = text.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.with_context(|| format!("--offset {text:?} is not a flash offset (0x10000 or 65536)"))
}

fn outcome_text(o: &FlashOutcome) -> String {
    match o {
        FlashOutcome::Unverified { version } => format!(
            "{version} written, every region checked with the device's MD5, device reset into its application; unverified (the ESP ROM loader cannot see the application)"
        ),
        other => super::device::outcome_text(other),
    }
}

pub fn run(esp: &str, command: DeviceCommand, json: bool) -> anyhow::Result<ExitCode> {
    let address = address(esp)?;
    super::runtime()?.block_on(async move {
        let fp = super::open().await?;
        match command {
            DeviceCommand::Info => {
                let info = fp.esp_info(&address).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&info)?);
                } else {
                    println!("chip: {}", info.chip);
                    println!("MAC: {}", info.mac.as_deref().unwrap_or("(not known for this chip)"));
                    match info.flash_size {
                        Some(n) => println!("flash: {} MiB ({n} bytes)", n / (1024 * 1024)),
                        None => println!("flash: size not known"),
                    }
                    println!(
                        "reset: {}{}",
                        info.reset,
                        if info.returned_to_app { " (reset back into its application)" } else { "" }
                    );
                    println!("in the ROM loader Fieldpatch can:");
                    for a in &info.allows {
                        println!("  - {a}");
                    }
                }
            }
            DeviceCommand::Image(ImageCommand::Upload {
                file,
                trust,
                device,
                devices,
                allow_unverified,
                offset: at,
                test,
            }) => {
                if test {
                    bail!("an ESP ROM loader has no test boot: drop --test");
                }
                if looks_like_bundle(&file) {
                    if at.is_some() {
                        bail!("a bundle's manifest gives each payload's flash offset: drop --offset");
                    }
                    let trust = trust.context(
                        "a bundle is verified against the trust store: pass --trust FILE",
                    )?;
                    let id = device.context(
                        "say which device this is with --device ID (its inventory record says whether the bundle applies and, since the ROM loader cannot tell, the version it runs); add --devices FILE when it is not in the synced inventory",
                    )?;
                    let record = fp.inventory_device(&id, address, devices.as_deref()).await?;
                    let bar = crate::output::Bar::bytes(json);
                    let outcome = fp
                        .esp_install(record, &file, &trust, &bar, &FlashOptions::default())
                        .await;
                    bar.finish();
                    let outcome = outcome?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&outcome)?);
                    } else {
                        println!("{id}: {}", outcome_text(&outcome));
                    }
                    if !matches!(
                        outcome,
                        FlashOutcome::Unverified { .. }
                            | FlashOutcome::Confirmed { .. }
                            | FlashOutcome::AlreadyDone { .. }
                    ) {
                        return Ok(ExitCode::from(3));
                    }
                } else {
                    let at = at.as_deref().map(offset).transpose()?.unwrap_or(DEFAULT_APP_OFFSET);
                    let bar = crate::output::Bar::bytes(json);
                    let done = fp.esp_upload(&address, &file, at, allow_unverified, &bar).await;
                    bar.finish();
                    let done = done?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&done)?);
                    } else {
                        println!(
                            "{}: wrote {} bytes at {:#x} to the {}, checked with the device's MD5 (SHA-256 {}); reset into its application, whose boot the ROM loader cannot check: unverified",
                            done.address, done.bytes, done.offset, done.chip, done.sha256
                        );
                    }
                }
            }
            _ => bail!(
                "an ESP device in its ROM loader takes `info` and `image upload FILE` only (it has no image slots, test boot or confirm)"
            ),
        }
        Ok(ExitCode::SUCCESS)
    })
}
