//! Warn once per device lifetime (until reset) about each kind of guest misbehaviour, so a
//! hostile guest cannot flood the host log.

/// A set of warnings already emitted, indexed by a small category number (< 64).
#[derive(Debug, Default)]
pub(crate) struct LogOnce(u64);

impl LogOnce {
    /// Emit `msg` at warn level unless this category already warned.
    pub(crate) fn warn(&mut self, category: u32, msg: std::fmt::Arguments<'_>) {
        let bit = 1u64 << (category % 64);
        if self.0 & bit == 0 {
            self.0 |= bit;
            log::warn!("{msg}");
        }
    }

    /// Forget what was emitted (device reset).
    pub(crate) fn clear(&mut self) {
        self.0 = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_once_per_category() {
        let mut l = LogOnce::default();
        l.warn(3, format_args!("a"));
        assert_eq!(l.0, 8);
        l.warn(3, format_args!("a"));
        assert_eq!(l.0, 8);
        l.clear();
        assert_eq!(l.0, 0);
    }
}
