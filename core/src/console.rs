//! Standard output shared with a live display on the terminal (the
//! command line's progress bar): a sink that prints hides the display
//! while it writes, so that no frame of it is left between its lines.

use std::sync::OnceLock;

type Suspend = Box<dyn Fn(&mut dyn FnMut()) + Send + Sync>;

static DISPLAY: OnceLock<Suspend> = OnceLock::new();

/// Installs the display: `suspend(write)` hides it, calls `write`, and
/// draws it again. Only the first call in a process takes effect.
pub fn set_display(suspend: impl Fn(&mut dyn FnMut()) + Send + Sync + 'static) {
    let _ = DISPLAY.set(Box::new(suspend));
}

/// Runs `write` with the display hidden, if there is one.
pub fn hide_display_while<R>(write: impl FnOnce() -> R) -> R {
    let Some(suspend) = DISPLAY.get() else {
        return write();
    };
    let mut write = Some(write);
    let mut result = None;
    suspend(&mut || result = write.take().map(|write| write()));
    // A display that did not call back still lets the write happen.
    match (result, write) {
        (Some(result), _) => result,
        (None, Some(write)) => write(),
        (None, None) => unreachable!("a write that ran has a result"),
    }
}
