//! The domain model shared by every part of Fieldpatch: versions and device identities.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use ts_rs::TS;

/// A firmware version as MCUboot and most vendors write it: `major.minor.revision+build`.
///
/// Ordering compares major, minor, revision, then build, numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, TS)]
pub struct Version {
    pub major: u8,
    pub minor: u8,
    pub revision: u16,
    pub build: u32,
}

impl Version {
    pub const fn new(major: u8, minor: u8, revision: u16, build: u32) -> Self {
        Self { major, minor, revision, build }
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.revision, self.build).cmp(&(
            other.major,
            other.minor,
            other.revision,
            other.build,
        ))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.revision)?;
        if self.build != 0 {
            write!(f, "+{}", self.build)?;
        }
        Ok(())
    }
}

/// Error parsing a [`Version`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid version {input:?}: expected MAJOR.MINOR.REVISION[+BUILD] with MAJOR, MINOR <= 255, REVISION <= 65535 (for example 1.4.2+7)"
)]
pub struct VersionParseError {
    pub input: String,
}

impl FromStr for Version {
    type Err = VersionParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || VersionParseError { input: s.to_string() };
        let (main, build) = match s.split_once('+') {
            Some((m, b)) => (m, b.parse::<u32>().map_err(|_| err())?),
            None => (s, 0),
        };
        let mut parts = main.split('.');
        let major = parts.next().ok_or_else(err)?.parse::<u8>().map_err(|_| err())?;
        let minor = parts.next().unwrap_or("0").parse::<u8>().map_err(|_| err())?;
        let revision = parts.next().unwrap_or("0").parse::<u16>().map_err(|_| err())?;
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Version { major, minor, revision, build })
    }
}

/// What a device says about itself, as far as Fieldpatch needs to match it to the inventory and to
/// patch bundles. Fields a transport cannot learn are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, TS)]
pub struct DeviceIdentity {
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub hardware_revision: Option<String>,
    pub serial_number: Option<String>,
    pub firmware_version: Option<Version>,
    /// SHA-256 of the running image as the device reports it (MCUboot image hash), hex.
    pub image_hash: Option<String>,
    /// What answered when the device was identified (`None`: not known, or not an SMP device).
    /// Absent from the serialized form when `None`, so identities recorded before the field
    /// existed keep their bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
    pub mode: Option<DeviceMode>,
}

/// What answers on a device with MCUboot when it is identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum DeviceMode {
    /// The application (its SMP server): uploads go to the secondary slot, test boot and revert.
    Application,
    /// MCUboot's serial recovery (the bootloader answering SMP): an upload overwrites the image
    /// it boots; there is no test boot and no revert.
    SerialRecovery,
}

impl DeviceMode {
    /// Whether a new image can be test-booted and reverted in this mode.
    pub fn can_revert(self) -> bool {
        self == DeviceMode::Application
    }
}

impl fmt::Display for DeviceMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceMode::Application => "application",
            DeviceMode::SerialRecovery => "MCUboot serial recovery",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_display_and_order() {
        let v: Version = "1.4.2+7".parse().unwrap();
        assert_eq!(v, Version::new(1, 4, 2, 7));
        assert_eq!(v.to_string(), "1.4.2+7");
        assert_eq!("2".parse::<Version>().unwrap().to_string(), "2.0.0");
        assert!(Version::new(1, 10, 0, 0) > Version::new(1, 9, 300, 0));
        assert!("1.2.3.4".parse::<Version>().is_err());
        assert!("256.0.0".parse::<Version>().is_err());
        let e = "x".parse::<Version>().unwrap_err().to_string();
        assert!(e.contains("MAJOR.MINOR.REVISION"), "{e}");
    }

    #[test]
    fn identities_without_a_mode_keep_their_bytes() {
        let old = r#"{"vendor":"Acme","model":"S","hardware_revision":null,"serial_number":"SN1","firmware_version":{"major":1,"minor":0,"revision":0,"build":0},"image_hash":null}"#;
        let id: DeviceIdentity = serde_json::from_str(old).unwrap();
        assert_eq!(id.mode, None);
        assert_eq!(serde_json::to_string(&id).unwrap(), old);
        // Older still: fields missing altogether read as unknown.
        let id: DeviceIdentity = serde_json::from_str(r#"{"vendor":"Acme"}"#).unwrap();
        assert_eq!(id.mode, None);
    }

    #[test]
    fn identities_with_a_mode_round_trip() {
        let id = DeviceIdentity {
            model: Some("S".into()),
            mode: Some(DeviceMode::SerialRecovery),
            ..Default::default()
        };
        let text = serde_json::to_string(&id).unwrap();
        assert!(text.ends_with(r#""mode":"serial_recovery"}"#), "{text}");
        assert_eq!(serde_json::from_str::<DeviceIdentity>(&text).unwrap(), id);
        let app: DeviceMode = serde_json::from_str(r#""application""#).unwrap();
        assert!(app.can_revert() && !DeviceMode::SerialRecovery.can_revert());
        assert!(serde_json::from_str::<DeviceMode>(r#""bootloader""#).is_err());
    }
}
