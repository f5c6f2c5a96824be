//! One module per subcommand group; each is a thin layer over `fieldpatch-core`.

pub mod audit;
pub mod bundle;
pub mod credentials;
pub mod demo;
pub mod device;
pub mod dfu;
pub mod discover;
pub mod esp;
pub mod info;
pub mod keys;
pub mod log;
pub mod session;
pub mod sync;

/// Open Fieldpatch in the data directory, reaching devices through the system's drivers.
pub async fn open() -> anyhow::Result<fieldpatch_core::Fieldpatch> {
    let connector = std::sync::Arc::new(fieldpatch_core::flash::connect::DriverConnector {
        usb: fieldpatch_core::flash::connect::SystemUsb,
    });
    Ok(fieldpatch_core::Fieldpatch::open(connector).await?)
}

/// A runtime for commands that call the async core.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}
