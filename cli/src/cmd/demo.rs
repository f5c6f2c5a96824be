//! `fieldpatch demo`: the app's built-in demo site, headless, so every job the app does on it can
//! be done from the CLI (plan, session, log, sync).

use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;

/// Start the demo site, write its devices file, and serve until Ctrl-C.
pub fn run(dir: Option<PathBuf>, json: bool) -> anyhow::Result<ExitCode> {
    let dir = match dir {
        Some(d) => d,
        None => fieldpatch_core::paths::data_dir()?.0.join("demo"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    super::runtime()?.block_on(async move {
        let demo = fieldpatch_demo::start(&dir)?;
        // The gateway's password goes into the keyring of the data directory the CLI's next
        // commands use, as a technician's would before a visit.
        let gateway = match &demo.gateway_absent {
            Some(why) => why.clone(),
            None => match keep_gateway_password(&demo).await {
                Ok(()) => format!(
                    "SWUpdate gateway {}: its password is in this laptop's keyring as `{}`",
                    fieldpatch_demo::GATEWAY_ID,
                    fieldpatch_demo::GATEWAY_CREDENTIAL
                ),
                Err(e) => format!(
                    "SWUpdate gateway {}: {e:#}; plans refuse it until `fieldpatch credentials set {}`",
                    fieldpatch_demo::GATEWAY_ID,
                    fieldpatch_demo::GATEWAY_CREDENTIAL
                ),
            },
        };
        // The demo's USB board sits on the lab's in-process USB backend, which only the app
        // shares; the devices file lists what the CLI can reach (serial and UDP).
        let reachable: Vec<_> = demo
            .devices
            .iter()
            .filter(|d| !matches!(d.address, fieldpatch_core::plan::DeviceAddress::Usb { .. }))
            .collect();
        let devices = dir.join("devices.json");
        std::fs::write(&devices, serde_json::to_vec_pretty(&reachable)?)
            .with_context(|| format!("cannot write {}", devices.display()))?;
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "devices": devices,
                    "catalog": demo.catalog_dir,
                    "trust": demo.trust_path,
                    "gateway": gateway,
                })
            );
        } else {
            println!(
                "demo site running: {} devices for the CLI (the USB board is reachable from the app only)",
                reachable.len()
            );
            println!("  devices: {}", devices.display());
            println!("  catalog: {}", demo.catalog_dir.display());
            println!("  trust:   {}", demo.trust_path.display());
            println!("  {gateway}");
            println!(
                "try: fieldpatch plan --devices {} --catalog {} --trust {} --out plan.json",
                devices.display(),
                demo.catalog_dir.display(),
                demo.trust_path.display()
            );
            println!("Ctrl-C stops the demo devices");
        }
        tokio::signal::ctrl_c().await?;
        drop(demo);
        Ok(ExitCode::SUCCESS)
    })
}

/// Put the demo gateway's password into the keyring of the CLI's data directory.
async fn keep_gateway_password(demo: &fieldpatch_demo::Demo) -> anyhow::Result<()> {
    let fp = super::open().await?;
    demo.store_gateway_password(&fp).await?;
    Ok(())
}
