//! The ESP ROM loader probe: ESP32-family chips on serial ports, recognised by the SYNC of their
//! ROM serial bootloader.
//!
//! Design decisions:
//! - **Opt-in, because it can reset a device.** A chip running its application does not answer
//!   SYNC: reaching the ROM loader takes the adapter's DTR/RTS reset sequence, which reboots the
//!   device. The probe therefore exists only when the technician allows it, with the reset mode
//!   they choose ([`ResetMode::NoReset`] for chips already held in download mode, which only
//!   syncs). After a probe that reset the chip, the chip is reset again into its application, so
//!   discovery leaves it as it found it.
//! - **Recognition is a well-formed SYNC answer**, as esptool's: SLIP-framed responses to the
//!   SYNC command. Bytes that are not SLIP answers (an SMP console, a log) are
//!   [`ProbeOutcome::Unrecognized`]; nothing at all is [`ProbeOutcome::Silent`].
//! - **Identity**: the base MAC (lower-case, colon-separated, as esptool prints it) as the
//!   serial number, where the driver knows where the ROM keeps it: what the inventory matches.
//!   The chip (esptool's name: `esp32`, `esp32c3`, ...) and the flash size are facts, not the
//!   product's vendor or model, which the inventory knows. A ROM loader runs no firmware, so no
//!   running version is reported.
//! - The probe opens the port itself through [`EspSerial`], the port the flash pipeline uses.

use super::probe::{
    BoxFuture, Details, Endpoint, Identity, Probe, ProbeContext, ProbeError, ProbeOutcome,
    ProbeReport,
};
use crate::esp::{ConnectOptions, EspError, EspLoader, EspSerial, ResetMode, Timeouts};
use std::collections::BTreeMap;

/// The protocol name ESP answers are reported under.
pub const PROTOCOL: &str = "esp-rom";

/// The ESP ROM loader probe (serial only). See the module docs.
#[derive(Debug, Clone, Copy)]
pub struct EspRomProbe {
    reset: ResetMode,
}

impl EspRomProbe {
    /// A probe that gets chips into their loader with `reset` (and back into their application
    /// afterwards, unless `reset` is [`ResetMode::NoReset`]).
    pub fn new(reset: ResetMode) -> EspRomProbe {
        EspRomProbe { reset }
    }
}

impl Probe for EspRomProbe {
    fn protocol(&self) -> &'static str {
        PROTOCOL
    }

    fn probes_serial(&self) -> bool {
        true
    }

    fn probe<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        ctx: &'a ProbeContext,
    ) -> BoxFuture<'a, Result<ProbeOutcome, ProbeError>> {
        Box::pin(async move {
            let Endpoint::Serial { path, baud } = endpoint else {
                return Ok(ProbeOutcome::Silent);
            };
            let (p, b) = (path.clone(), *baud);
            let port = tokio::task::spawn_blocking(move || EspSerial::open(&p, b))
                .await
                .map_err(|e| ProbeError::Unavailable(format!("opening the port: {e}")))?
                .map_err(|e| ProbeError::Unavailable(e.to_string()))?;
            let opts = ConnectOptions {
                reset: self.reset,
                attempts: 1,
                timeouts: Timeouts {
                    sync: ctx.answer_timeout,
                    command: ctx.request_timeout,
                    ..Timeouts::default()
                },
            };
            let connected = tokio::time::timeout_at(ctx.deadline, EspLoader::connect(port, opts));
            let mut loader = match connected.await {
                Err(_) => return Ok(ProbeOutcome::Silent),
                Ok(Err(EspError::NoSync { .. })) => return Ok(ProbeOutcome::Silent),
                Ok(Err(e @ EspError::LinesUnsupported { .. })) => {
                    return Err(ProbeError::Unavailable(e.to_string()));
                }
                Ok(Err(e)) => return Ok(ProbeOutcome::Unrecognized(e.to_string())),
                Ok(Ok(loader)) => loader,
            };
            let mut facts = BTreeMap::from([("reset".to_string(), self.reset.name().to_string())]);
            let mut identity = Identity::default();
            let asked = tokio::time::timeout_at(ctx.deadline, async {
                let info = loader.detect_chip().await?;
                let flash = loader.flash_id().await.ok();
                Ok::<_, EspError>((info, flash))
            })
            .await;
            match asked {
                Ok(Ok((info, flash))) => {
                    facts.insert("chip".into(), chip_name(info.chip));
                    if let Some(mac) = info.mac {
                        let text = mac_text(&mac);
                        facts.insert("mac".into(), text.clone());
                        identity.serial_number = Some(text);
                    }
                    if let Some(size) = flash.and_then(|f| f.size) {
                        facts.insert("flash_size".into(), size.to_string());
                    }
                }
                Ok(Err(e)) => {
                    facts.insert("problem".into(), e.to_string());
                }
                Err(_) => {
                    facts.insert(
                        "problem".into(),
                        "the deadline came before the chip was identified".into(),
                    );
                }
            }
            if self.reset != ResetMode::NoReset
                && let Err(e) = loader.run_app().await
            {
                facts.insert("left_in_loader".into(), e.to_string());
            }
            Ok(ProbeOutcome::Answered(Box::new(ProbeReport {
                protocol: PROTOCOL,
                identity,
                details: Details::Facts(facts),
            })))
        })
    }
}

/// A chip as esptool's `--chip` names it: `esp32`, `esp32c3`.
pub fn chip_name(chip: crate::esp::Chip) -> String {
    chip.name().replace('-', "").to_ascii_lowercase()
}

/// A MAC address as esptool prints it: `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_mac_reads_as_esptool_prints_it() {
        assert_eq!(super::mac_text(&[0x24, 0x0a, 0xc4, 0, 0x1b, 0xff]), "24:0a:c4:00:1b:ff");
        assert_eq!(super::chip_name(crate::esp::Chip::Esp32C3), "esp32c3");
    }
}
