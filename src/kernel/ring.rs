//! A reader of a BPF ring buffer (`BPF_MAP_TYPE_RINGBUF`) that may have been read before,
//! by a daemon that is gone.
//!
//! Why not aya's `RingBuf`: aya 0.13 starts its cached producer position at 0 while it takes
//! the consumer position from the map. Adopting a pinned ring whose consumer position is not
//! 0 (a predecessor read a record, then was killed) makes it read zeroed headers past the
//! producer forever: the event thread spun at 100% CPU, `status` never answered, and the
//! consumer position it wrote ran past the producer's, so the kernel reserved no record
//! again. This reader loads both positions on every drain and never reads past the
//! producer's.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// Header bits of a ring buffer record (`include/uapi/linux/bpf.h`).
const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HEADER_LEN: usize = 8;

/// A mapped ring buffer: the consumer page (read-write) and the producer page with the data
/// pages mapped twice (read-only), as the kernel lays them out.
#[derive(Debug)]
pub struct RingReader {
    consumer: *mut libc::c_void,
    producer: *mut libc::c_void,
    page: usize,
    size: usize,
}

// SAFETY: the mappings are owned by this value and only read or written through atomics.
unsafe impl Send for RingReader {}

impl RingReader {
    /// Maps the ring buffer map `fd` of `size` data bytes (its `max_entries`, a power of two
    /// multiple of the page size).
    pub fn new(fd: BorrowedFd<'_>, size: usize) -> std::io::Result<Self> {
        // SAFETY: sysconf only reads a configuration value.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|p| *p > 0)
            .unwrap_or(4096);
        if size == 0 || !size.is_power_of_two() || size % page != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("ring buffer size {size} is not a power-of-two multiple of the page"),
            ));
        }
        // SAFETY: a new shared mapping of the map's first page (the consumer position), which
        // the kernel lets the owner of the map fd write; nothing else refers to it.
        let consumer = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if consumer == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new read-only shared mapping of the producer page and the data pages twice
        // (the kernel maps them so that a record never wraps in the mapping).
        let producer = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page + 2 * size,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                page as libc::off_t,
            )
        };
        if producer == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            // SAFETY: unmapping the mapping made above, which nothing else refers to.
            unsafe { libc::munmap(consumer, page) };
            return Err(e);
        }
        Ok(RingReader {
            consumer,
            producer,
            page,
            size,
        })
    }

    fn consumer_pos(&self) -> &AtomicUsize {
        // SAFETY: the first word of the consumer page, mapped for the life of self and
        // aligned (page-aligned mapping); the kernel reads it concurrently, hence atomic.
        unsafe { &*(self.consumer as *const AtomicUsize) }
    }

    fn producer_pos(&self) -> &AtomicUsize {
        // SAFETY: as above, the first word of the producer page; the kernel writes it.
        unsafe { &*(self.producer as *const AtomicUsize) }
    }

    /// The consumer and producer positions now (for tests and status).
    pub fn positions(&self) -> (usize, usize) {
        (
            self.consumer_pos().load(Ordering::Acquire),
            self.producer_pos().load(Ordering::Acquire),
        )
    }

    /// Calls `f` with each committed record, oldest first, up to `max` of them, and consumes
    /// them. Stops at a record still being written. Returns how many records it passed.
    pub fn drain(&mut self, max: usize, f: impl FnMut(&[u8])) -> usize {
        // SAFETY: the data pages start one page into the producer mapping and are mapped
        // twice (2 * size bytes), as `drain_records` requires.
        let data = unsafe { (self.producer as *const u8).add(self.page) };
        // SAFETY: `data` is valid for 2 * size bytes for the life of self (see above).
        unsafe {
            drain_records(
                self.consumer_pos(),
                self.producer_pos(),
                data,
                self.size,
                max,
                f,
            )
        }
    }
}

/// The drain loop over a ring laid out as the kernel lays it out.
///
/// # Safety
/// `data` must be valid for reads of `2 * size` bytes (the data pages mapped twice), 8-byte
/// aligned, for the duration of the call; `size` a power of two.
unsafe fn drain_records(
    consumer: &AtomicUsize,
    producer: &AtomicUsize,
    data: *const u8,
    size: usize,
    max: usize,
    mut f: impl FnMut(&[u8]),
) -> usize {
    let mask = size - 1;
    let mut cons = consumer.load(Ordering::Acquire);
    let prod = producer.load(Ordering::Acquire);
    // A consumer position ahead of the producer's (an earlier reader overran it): moved back
    // to the producer's, since the kernel reserves nothing while it is ahead.
    if cons != prod && cons.wrapping_sub(prod) <= isize::MAX as usize {
        consumer.store(prod, Ordering::Release);
        return 0;
    }
    let mut seen = 0;
    while cons != prod && seen < max {
        let offset = cons & mask;
        // SAFETY: offset < size and headers are 8-aligned, so the header lies in the first
        // copy of the data pages (caller's contract); the kernel commits it with release
        // ordering.
        let header = unsafe { (*(data.add(offset) as *const AtomicU32)).load(Ordering::Acquire) };
        if header & BUSY_BIT != 0 {
            break;
        }
        let len = (header & !(BUSY_BIT | DISCARD_BIT)) as usize;
        if len + HEADER_LEN > size || len + HEADER_LEN > prod.wrapping_sub(cons) {
            // Not a record: skip what is queued rather than read past the producer.
            cons = prod;
            break;
        }
        if header & DISCARD_BIT == 0 {
            // SAFETY: offset + 8 + len <= 2 * size (offset < size, len + 8 <= size), inside
            // the double mapping.
            let record = unsafe { std::slice::from_raw_parts(data.add(offset + HEADER_LEN), len) };
            f(record);
        }
        seen += 1;
        cons = cons.wrapping_add((len + HEADER_LEN).next_multiple_of(8));
    }
    consumer.store(cons, Ordering::Release);
    seen
}

impl Drop for RingReader {
    fn drop(&mut self) {
        // SAFETY: unmapping the two mappings made in `new`, which no reference outlives
        // (every borrow of them is tied to &self).
        unsafe {
            libc::munmap(self.consumer, self.page);
            libc::munmap(self.producer, self.page + 2 * self.size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: usize = 256;

    /// A ring as the kernel lays it out, with records written by `push`.
    struct FakeRing {
        consumer: AtomicUsize,
        producer: AtomicUsize,
        data: Vec<u64>, // 2 * SIZE bytes, 8-aligned
    }

    impl FakeRing {
        fn at(pos: usize) -> Self {
            FakeRing {
                consumer: AtomicUsize::new(pos),
                producer: AtomicUsize::new(pos),
                data: vec![0; 2 * SIZE / 8],
            }
        }
        fn bytes(&mut self) -> &mut [u8] {
            // SAFETY: a Vec<u64> of 2 * SIZE / 8 elements is 2 * SIZE bytes.
            unsafe { std::slice::from_raw_parts_mut(self.data.as_mut_ptr().cast(), 2 * SIZE) }
        }
        fn push(&mut self, record: &[u8], header_bits: u32) {
            let pos = self.producer.load(Ordering::SeqCst);
            let at = pos & (SIZE - 1);
            let header = (record.len() as u32 | header_bits).to_ne_bytes();
            let len = record.len();
            let bytes = self.bytes();
            // Both copies, as the double mapping shows them.
            for base in [0, SIZE] {
                for (i, b) in header.iter().chain(&[0u8; 4]).chain(record).enumerate() {
                    let j = (at + i) % SIZE + base;
                    bytes[j] = *b;
                }
            }
            self.producer.store(
                pos + (len + HEADER_LEN).next_multiple_of(8),
                Ordering::SeqCst,
            );
        }
        fn drain(&mut self, max: usize) -> Vec<Vec<u8>> {
            let mut out = Vec::new();
            let data = self.data.as_ptr().cast::<u8>();
            // SAFETY: data holds 2 * SIZE bytes, 8-aligned.
            unsafe {
                drain_records(&self.consumer, &self.producer, data, SIZE, max, |r| {
                    out.push(r.to_vec())
                })
            };
            out
        }
    }

    #[test]
    fn an_adopted_ring_that_was_read_before_drains_nothing_and_stays_put() {
        // The hang: a predecessor consumed records (consumer = producer = 96), then died.
        let mut ring = FakeRing::at(96);
        assert!(ring.drain(1000).is_empty());
        assert_eq!(ring.consumer.load(Ordering::SeqCst), 96);
        ring.push(b"0123456789abcdef0123456789abcdef01234567", 0);
        let got = ring.drain(1000);
        assert_eq!(
            got,
            vec![b"0123456789abcdef0123456789abcdef01234567".to_vec()]
        );
        assert_eq!(
            ring.consumer.load(Ordering::SeqCst),
            ring.producer.load(Ordering::SeqCst)
        );
        assert!(ring.drain(1000).is_empty());
    }

    #[test]
    fn records_are_read_in_order_across_the_wrap_and_discards_skipped() {
        let mut ring = FakeRing::at(200);
        ring.push(&[1; 40], 0);
        ring.push(&[2; 40], DISCARD_BIT);
        ring.push(&[3; 40], 0);
        let got = ring.drain(1000);
        assert_eq!(got, vec![vec![1; 40], vec![3; 40]]);
    }

    #[test]
    fn a_record_being_written_stops_the_drain_and_max_bounds_it() {
        let mut ring = FakeRing::at(0);
        ring.push(&[1; 40], 0);
        ring.push(&[2; 40], 0);
        ring.push(&[3; 40], BUSY_BIT);
        assert_eq!(ring.drain(1), vec![vec![1; 40]]);
        assert_eq!(ring.drain(1000), vec![vec![2; 40]]);
        assert!(ring.drain(1000).is_empty());
    }

    #[test]
    fn a_consumer_position_past_the_producer_is_brought_back() {
        let mut ring = FakeRing::at(96);
        ring.consumer.store(4096, Ordering::SeqCst);
        assert!(ring.drain(1000).is_empty());
        assert_eq!(ring.consumer.load(Ordering::SeqCst), 96);
        ring.push(&[7; 40], 0);
        assert_eq!(ring.drain(1000), vec![vec![7; 40]]);
    }
}
