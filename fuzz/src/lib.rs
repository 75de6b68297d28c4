//! What the fuzz targets share.

use event_manager::{EventManager, MutEventSubscriber};

/// Runs the event loop until two turns in a row have nothing to do.
pub fn settle(em: &mut EventManager<Box<dyn MutEventSubscriber>>) {
    let mut idle = 0;
    while idle < 2 {
        if em.run_with_timeout(0).expect("event loop") == 0 {
            idle += 1;
        } else {
            idle = 0;
        }
    }
}
