//! The receive window against replayed datagrams: a bitmap of the last
//! [`WINDOW`] counters, in the style of RFC 6479 (blocks of 64 bits reused
//! as a ring, so moving forward clears whole words), as WireGuard keeps
//! it. A counter is accepted once, and only if it is newer than the window
//! or inside it and not seen yet. It is checked after the datagram has
//! authenticated, so a forged counter cannot move the window.

const BLOCKS: usize = 32;
const BITS: u64 = 64;
/// How far behind the newest counter a datagram may arrive (reordering
/// across lanes and GRO runs is far less).
pub const WINDOW: u64 = (BLOCKS as u64 - 1) * BITS;

#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Newest counter accepted.
    last: u64,
    bitmap: [u64; BLOCKS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            last: 0,
            bitmap: [0; BLOCKS],
        }
    }
}

impl ReplayWindow {
    /// True, and the counter marked seen, when `counter` is fresh.
    pub fn accept(&mut self, counter: u64) -> bool {
        if counter > self.last {
            let (old, new) = (self.last / BITS, counter / BITS);
            let clear = (new - old).min(BLOCKS as u64);
            for i in 1..=clear {
                self.bitmap[((old + i) % BLOCKS as u64) as usize] = 0;
            }
            self.last = counter;
        } else if self.last - counter > WINDOW {
            return false;
        }
        let block = &mut self.bitmap[((counter / BITS) % BLOCKS as u64) as usize];
        let bit = 1u64 << (counter % BITS);
        if *block & bit != 0 {
            return false;
        }
        *block |= bit;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn each_counter_once_and_old_ones_never() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(0));
        assert!(!w.accept(0));
        assert!(w.accept(2));
        assert!(w.accept(1), "reordered, inside the window");
        assert!(!w.accept(1));
        assert!(w.accept(10_000));
        assert!(!w.accept(10_000 - WINDOW - 1), "behind the window");
        assert!(w.accept(10_000 - WINDOW), "at its far edge");
        assert!(!w.accept(2));
    }

    proptest! {
        /// Against a set of every counter ever accepted: nothing is
        /// accepted twice, and a counter within the window that was never
        /// seen is accepted.
        #[test]
        fn never_twice_and_never_a_fresh_one_in_the_window_refused(
            counters in proptest::collection::vec(0u64..5000, 1..400)
        ) {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::HashSet::new();
            let mut newest = 0u64;
            for c in counters {
                let fresh = !seen.contains(&c) && (c > newest || newest - c <= WINDOW);
                prop_assert_eq!(w.accept(c), fresh);
                if fresh {
                    seen.insert(c);
                    newest = newest.max(c);
                }
            }
        }
    }
}
