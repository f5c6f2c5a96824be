//! The ESP chips the ROM loader can report: older ROMs (ESP8266, ESP32, ESP32-S2) are told apart
//! by a magic word at [`CHIP_DETECT_MAGIC_REG`], newer ones report a chip id in
//! GET_SECURITY_INFO (the same id an application image's header names).

/// ROM address whose value differs per chip model (read with READ_REG).
pub const CHIP_DETECT_MAGIC_REG: u32 = 0x4000_1000;

/// ESP32 eFuse read registers (the MAC lives in words 1 and 2).
pub const ESP32_EFUSE_RD_BASE: u32 = 0x3FF5_A000;
/// ESP32 RTC calibration register the ROM's baud divisor depends on.
pub const ESP32_RTCCALICFG1: u32 = 0x3FF5_F06C;

/// A chip model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Chip {
    Esp8266,
    Esp32,
    Esp32S2,
    Esp32S3,
    Esp32C2,
    Esp32C3,
    Esp32C5,
    Esp32C6,
    Esp32C61,
    Esp32H2,
    Esp32P4,
}

impl Chip {
    /// Every known chip.
    pub const ALL: [Chip; 11] = [
        Chip::Esp8266,
        Chip::Esp32,
        Chip::Esp32S2,
        Chip::Esp32S3,
        Chip::Esp32C2,
        Chip::Esp32C3,
        Chip::Esp32C5,
        Chip::Esp32C6,
        Chip::Esp32C61,
        Chip::Esp32H2,
        Chip::Esp32P4,
    ];

    /// The marketing name (as esptool prints it).
    pub fn name(self) -> &'static str {
        match self {
            Chip::Esp8266 => "ESP8266",
            Chip::Esp32 => "ESP32",
            Chip::Esp32S2 => "ESP32-S2",
            Chip::Esp32S3 => "ESP32-S3",
            Chip::Esp32C2 => "ESP32-C2",
            Chip::Esp32C3 => "ESP32-C3",
            Chip::Esp32C5 => "ESP32-C5",
            Chip::Esp32C6 => "ESP32-C6",
            Chip::Esp32C61 => "ESP32-C61",
            Chip::Esp32H2 => "ESP32-H2",
            Chip::Esp32P4 => "ESP32-P4",
        }
    }

    /// The chip id of application image headers and GET_SECURITY_INFO (none for the ESP8266).
    pub fn image_chip_id(self) -> Option<u16> {
        Some(match self {
            Chip::Esp8266 => return None,
            Chip::Esp32 => 0,
            Chip::Esp32S2 => 2,
            Chip::Esp32S3 => 9,
            Chip::Esp32C2 => 12,
            Chip::Esp32C3 => 5,
            Chip::Esp32C5 => 23,
            Chip::Esp32C6 => 13,
            Chip::Esp32C61 => 20,
            Chip::Esp32H2 => 16,
            Chip::Esp32P4 => 18,
        })
    }

    /// The magic word at [`CHIP_DETECT_MAGIC_REG`] of the chips detected by it.
    pub fn magic(self) -> Option<u32> {
        match self {
            Chip::Esp8266 => Some(0xFFF0_C101),
            Chip::Esp32 => Some(0x00F0_1D83),
            Chip::Esp32S2 => Some(0x0000_07C6),
            _ => None,
        }
    }

    /// The chip whose magic word is `magic`.
    pub fn from_magic(magic: u32) -> Option<Chip> {
        Chip::ALL.into_iter().find(|c| c.magic() == Some(magic))
    }

    /// The chip with image chip id `id`.
    pub fn from_chip_id(id: u32) -> Option<Chip> {
        Chip::ALL.into_iter().find(|c| c.image_chip_id().map(u32::from) == Some(id))
    }

    /// Whether the ROM's FLASH_BEGIN takes a fifth word (the encryption flag).
    pub fn flash_begin_has_encrypt_flag(self) -> bool {
        !matches!(self, Chip::Esp8266 | Chip::Esp32)
    }

    /// How many status bytes the ROM appends (ESP8266: 2, the ESP32 family: 4).
    pub fn rom_status_len(self) -> usize {
        if self == Chip::Esp8266 { 2 } else { 4 }
    }
}

/// Where a chip's SPI flash controller has the registers of a user command (esptool's
/// `run_spiflash_command`), for the chips whose layout this driver knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpiRegs {
    /// SPI_CMD (bit 18 starts a user command and clears when it is done).
    pub base: u32,
    /// SPI_ADDR: the address phase of a user command.
    pub addr: u32,
    /// The address sits in the register's top bits (ESP32) rather than its bottom bits.
    pub addr_msb: bool,
    pub usr: u32,
    pub usr1: u32,
    pub usr2: u32,
    pub mosi_dlen: u32,
    pub miso_dlen: u32,
    pub w0: u32,
}

impl Chip {
    /// The SPI user-command registers (`None` where this driver does not know them).
    pub fn spi_regs(self) -> Option<SpiRegs> {
        let newer = |base| SpiRegs {
            base,
            addr: base + 0x04,
            addr_msb: false,
            usr: base + 0x18,
            usr1: base + 0x1C,
            usr2: base + 0x20,
            mosi_dlen: base + 0x24,
            miso_dlen: base + 0x28,
            w0: base + 0x58,
        };
        match self {
            Chip::Esp32 => Some(SpiRegs {
                base: 0x3FF4_2000,
                addr: 0x3FF4_2004,
                addr_msb: true,
                usr: 0x3FF4_201C,
                usr1: 0x3FF4_2020,
                usr2: 0x3FF4_2024,
                mosi_dlen: 0x3FF4_2028,
                miso_dlen: 0x3FF4_202C,
                w0: 0x3FF4_2080,
            }),
            Chip::Esp32S2 => Some(newer(0x3F40_2000)),
            Chip::Esp32S3 | Chip::Esp32C3 | Chip::Esp32C2 => Some(newer(0x6000_2000)),
            Chip::Esp32C6 | Chip::Esp32H2 => Some(newer(0x6000_3000)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Chip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_are_consistent() {
        for chip in Chip::ALL {
            if let Some(m) = chip.magic() {
                assert_eq!(Chip::from_magic(m), Some(chip));
            }
            if let Some(id) = chip.image_chip_id() {
                assert_eq!(Chip::from_chip_id(u32::from(id)), Some(chip));
            }
        }
        assert_eq!(Chip::from_magic(0x00F0_1D83), Some(Chip::Esp32));
        assert_eq!(Chip::from_magic(0xdead_beef), None);
        assert_eq!(Chip::from_chip_id(9), Some(Chip::Esp32S3));
    }
}
