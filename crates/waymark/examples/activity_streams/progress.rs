//! Progress bars drawn from the runner's events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use waymark::{MigrationId, RunEvent};

/// One bar per migration, fed by [`Bars::observe`].
#[derive(Debug, Clone, Default)]
pub struct Bars {
    multi: MultiProgress,
    bars: Arc<Mutex<HashMap<MigrationId, ProgressBar>>>,
}

impl Bars {
    /// Updates the bars for one runner event.
    pub fn observe(&self, event: &RunEvent) {
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            RunEvent::WaitingForLock { waited, .. } => {
                let _ = self
                    .multi
                    .println(format!("waiting for another instance ({waited:.0?})"));
            }
            RunEvent::Started {
                id,
                name,
                position,
                count,
                resuming,
                ..
            } => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(style());
                let resumed = if *resuming { " (resuming)" } else { "" };
                bar.set_prefix(format!("[{position}/{count}] {name}{resumed}"));
                bar.enable_steady_tick(Duration::from_millis(120));
                bars.insert(*id, bar);
            }
            RunEvent::Progress { id, progress, .. } => {
                if let Some(bar) = bars.get(id) {
                    if let Some(total) = progress.total {
                        bar.set_length(total);
                    }
                    bar.set_position(progress.done);
                    let eta = progress
                        .eta
                        .map_or_else(|| "?".into(), |eta| format!("{:.1}s", eta.as_secs_f64()));
                    bar.set_message(format!("{:>7.0}/s  ETA {eta}", progress.rate));
                }
            }
            RunEvent::Succeeded { id, duration, .. } => {
                if let Some(bar) = bars.remove(id) {
                    bar.finish_with_message(format!("done in {:.2}s", duration.as_secs_f64()));
                }
            }
            RunEvent::Failed { id, error, .. } => {
                if let Some(bar) = bars.remove(id) {
                    bar.abandon_with_message(format!(
                        "FAILED: {}",
                        waymark::render::one_line(error, 100)
                    ));
                }
            }
            _ => {}
        }
    }
}

fn style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix:40} [{bar:30}] {pos:>6}/{len:6} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}
