//! How the CLI prints: one progress adapter (indicatif bars, hidden with `--json`) and one error
//! printer that gives `{"error": {"code", "message"}}` with `--json` and plain text otherwise.
//! Codes come from the library's error types, so scripts branch on them, never on messages.

use fieldpatch_core::progress::{Progress, TransferProgress};

/// A progress bar for one transfer, fed by the core's progress callbacks.
#[derive(Debug)]
pub struct Bar(indicatif::ProgressBar);

impl Bar {
    /// A bar that counts bytes (hidden in JSON mode).
    pub fn bytes(json: bool) -> Bar {
        let bar =
            if json { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(0) };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:8} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Bar(bar)
    }

    /// Remove the bar from the terminal.
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Progress for Bar {
    fn phase(&self, name: &str) {
        self.0.set_message(name.to_string());
    }
    fn transfer(&self, p: TransferProgress) {
        self.0.set_length(p.total);
        self.0.set_position(p.done);
    }
    fn note(&self, message: &str) {
        self.0.println(message);
    }
}

/// The stable code of an error from the core, or `error` for one that has none (bad arguments,
/// files the CLI itself reads).
pub fn error_code(err: &anyhow::Error) -> &'static str {
    use fieldpatch_core::bundle::BundleError;
    use fieldpatch_core::bundle::input::InputError;
    use fieldpatch_core::credentials::CredentialError;
    use fieldpatch_core::session::batch::BatchError;
    use fieldpatch_core::store::StoreError;
    use fieldpatch_core::sync::SyncError;
    use fieldpatch_core::visitlog::LogError;
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<fieldpatch_core::Error>() {
            return e.code();
        }
        if let Some(e) = cause.downcast_ref::<fieldpatch_core::export::ExportError>() {
            return e.code();
        }
        if let Some(e) = cause.downcast_ref::<BundleError>() {
            return e.code();
        }
        if let Some(e) = cause.downcast_ref::<InputError>() {
            return e.code();
        }
        if let Some(e) = cause.downcast_ref::<BatchError>() {
            return e.code();
        }
        if let Some(e) = cause.downcast_ref::<CredentialError>() {
            return e.code();
        }
        if let Some(e) = cause.downcast_ref::<StoreError>() {
            return e.code();
        }
        if let Some(e) = cause.downcast_ref::<LogError>() {
            return e.code();
        }
        if let Some(e) = cause.downcast_ref::<SyncError>() {
            return e.code();
        }
        if let Some(e) = cause.downcast_ref::<fieldpatch_core::flash::TargetError>() {
            return e.code();
        }
        if let Some(e) = cause.downcast_ref::<fieldpatch_core::paths::PathError>() {
            return e.code();
        }
        if let Some(e) = cause.downcast_ref::<fieldpatch_core::plan::AddressError>() {
            return e.code();
        }
        if let Some(e) = cause.downcast_ref::<fieldpatch_core::discovery::DiscoverError>() {
            return e.code();
        }
    }
    "error"
}

/// Print a failed command's error: `error: ...` on stderr for the technician, and with `--json`
/// also `{"error": {"code", "message"}}` on stdout, so a script reads one JSON document either way.
pub fn print_error(err: &anyhow::Error, json: bool) {
    if json {
        let v = serde_json::json!({
            "error": { "code": error_code(err), "message": format!("{err:#}") }
        });
        println!("{v}");
    }
    eprintln!("error: {err:#}");
}
