//! How the window draws on Linux: through the GPU when the machine has one, in software without
//! OpenGL when it has none.
//!
//! WebKitGTK sets up OpenGL in the app's own process before it draws anything: GTK probes GLX when
//! it opens the display, and WebKit opens an EGL display to find the render node its web process
//! should use. On a machine without a GPU (a virtual machine or container without one passed
//! through, CI under Xvfb) Mesa answers both with its software driver, llvmpipe, which maps
//! libLLVM: about 45 MB of the app process's resident memory spent on a GPU that is not there, and
//! the web process then draws through the same emulated GL. Measured under Xvfb without a GPU
//! (WebKitGTK 2.50, debug build, demo site, Home screen): peak resident memory of the app process
//! 195 MB with WebKit's defaults, 140 MB in software mode; of the web process about 260 MB and
//! 178 MB.
//!
//! [`GPU_ENV`] chooses: `on` keeps WebKit's defaults (the GPU whenever WebKit can use it), `off`
//! draws in software, and `auto` (the default) is `off` only on a machine with no GPU device at
//! all (no `/dev/dri/card*` or `/dev/dri/renderD*`, no NVIDIA `/dev/nvidiactl`). There software
//! mode loses no acceleration: whatever GL would do runs on the CPU anyway. A laptop with a GPU
//! keeps WebKit's defaults; `off` there would trade smooth scrolling for memory.
//!
//! What software mode costs besides the GPU: WebKitGTK (2.50) starts passing the desktop's GTK
//! settings (font and text scaling, theme, cursor blink, animations) to the page only when it
//! opens that EGL display, so in software mode the page does not follow them. The page's own
//! styles set its fonts, form controls included (`ui/src/app.css`), so it looks the same either
//! way; desktop text scaling is what software mode does not follow.
//!
//! A variable the technician has set themselves (`GDK_GL`, `WEBKIT_DISABLE_DMABUF_RENDERER`,
//! `WEBKIT_WEB_RENDER_DEVICE_FILE`) is left as it is.

use std::path::Path;

/// The environment variable that chooses how the window draws: `on`, `off` or `auto` (default).
pub const GPU_ENV: &str = "FIELDPATCH_GPU";

/// What the window is drawn with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rendering {
    /// WebKitGTK's defaults: OpenGL, on the GPU when there is one.
    WebKitDefaults,
    /// Software, without OpenGL in either process.
    Software,
}

/// The choice made at startup, and why (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub rendering: Rendering,
    pub why: String,
}

/// The name a render node takes in software mode. WebKit uses `WEBKIT_WEB_RENDER_DEVICE_FILE` as
/// the render node instead of asking EGL for one (which loads the GL driver in the app process);
/// a path that names no DRM device is taken as no render node, which is the truth on a machine
/// without a GPU and what software mode wants on one with.
const NO_RENDER_NODE: &str = "/dev/dri/none";

/// What software mode sets, when the technician has not set it: GTK skips its GLX probe, WebKit
/// draws without its GL (DMA-BUF) renderer and does not open an EGL display to find a render node.
const SOFTWARE: [(&str, &str); 3] = [
    ("GDK_GL", "disable"),
    ("WEBKIT_DISABLE_DMABUF_RENDERER", "1"),
    ("WEBKIT_WEB_RENDER_DEVICE_FILE", NO_RENDER_NODE),
];

/// How to draw, given [`GPU_ENV`]'s value (`None`: unset) and whether the machine has a GPU.
pub fn choose(setting: Option<&str>, has_gpu: bool) -> Choice {
    let normalized = setting.map(|s| s.trim().to_ascii_lowercase());
    let auto = |prefix: String| {
        if has_gpu {
            Choice {
                rendering: Rendering::WebKitDefaults,
                why: format!("{prefix}a GPU device is present: WebKit's GPU rendering"),
            }
        } else {
            Choice {
                rendering: Rendering::Software,
                why: format!(
                    "{prefix}no GPU device: software rendering without OpenGL ({GPU_ENV}=on for WebKit's defaults)"
                ),
            }
        }
    };
    match normalized.as_deref() {
        Some("on") => Choice {
            rendering: Rendering::WebKitDefaults,
            why: format!("{GPU_ENV}=on: WebKit's GPU rendering"),
        },
        Some("off") => Choice {
            rendering: Rendering::Software,
            why: format!("{GPU_ENV}=off: software rendering without OpenGL"),
        },
        None | Some("" | "auto") => auto(String::new()),
        Some(_) => auto(format!(
            "{GPU_ENV}={:?} is not on, off or auto, so auto applies: ",
            setting.unwrap_or_default()
        )),
    }
}

/// Whether `dev` (`/dev`) holds a GPU: a DRM card or render node, or NVIDIA's control device.
pub fn has_gpu_device(dev: &Path) -> bool {
    let drm = std::fs::read_dir(dev.join("dri")).into_iter().flatten().flatten().any(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        name.starts_with("card") || name.starts_with("renderD")
    });
    drm || dev.join("nvidiactl").exists()
}

/// Choose how the window draws and, for software, set what GTK and WebKit read. Must run before
/// GTK starts and while the process has one thread: first thing in [`crate::run`].
#[allow(unsafe_code)]
pub fn apply() -> Choice {
    let setting = std::env::var(GPU_ENV).ok();
    let choice = choose(setting.as_deref(), has_gpu_device(Path::new("/dev")));
    if choice.rendering == Rendering::Software {
        for (name, value) in SOFTWARE {
            if std::env::var_os(name).is_none() {
                // SAFETY: `run` calls this before GTK, Tauri, tokio or anything else has started a
                // thread, so nothing reads or writes the environment at the same time.
                unsafe { std::env::set_var(name, value) };
            }
        }
    }
    choice
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_draws_in_software_only_without_a_gpu() {
        for setting in [None, Some("auto"), Some(""), Some(" AUTO ")] {
            assert_eq!(choose(setting, true).rendering, Rendering::WebKitDefaults, "{setting:?}");
            assert_eq!(choose(setting, false).rendering, Rendering::Software, "{setting:?}");
        }
    }

    #[test]
    fn on_and_off_are_obeyed_whatever_the_machine() {
        for has_gpu in [true, false] {
            assert_eq!(choose(Some("on"), has_gpu).rendering, Rendering::WebKitDefaults);
            assert_eq!(choose(Some("Off"), has_gpu).rendering, Rendering::Software);
        }
    }

    #[test]
    fn an_unknown_value_is_named_and_taken_as_auto() {
        let c = choose(Some("Fast"), false);
        assert_eq!(c.rendering, Rendering::Software);
        assert!(c.why.contains("=\"Fast\" is not on, off or auto"), "{}", c.why);
        assert_eq!(choose(Some("fast"), true).rendering, Rendering::WebKitDefaults);
    }

    #[test]
    fn a_gpu_is_a_drm_card_or_render_node_or_nvidia() {
        let dev = tempfile::tempdir().unwrap();
        assert!(!has_gpu_device(dev.path()), "no /dev/dri");
        let dri = dev.path().join("dri");
        std::fs::create_dir(&dri).unwrap();
        std::fs::create_dir(dri.join("by-path")).unwrap();
        assert!(!has_gpu_device(dev.path()), "an empty /dev/dri");
        std::fs::write(dri.join("renderD128"), b"").unwrap();
        assert!(has_gpu_device(dev.path()));
        std::fs::remove_file(dri.join("renderD128")).unwrap();
        std::fs::write(dri.join("card0"), b"").unwrap();
        assert!(has_gpu_device(dev.path()));

        let nvidia = tempfile::tempdir().unwrap();
        std::fs::write(nvidia.path().join("nvidiactl"), b"").unwrap();
        assert!(has_gpu_device(nvidia.path()));
    }
}
