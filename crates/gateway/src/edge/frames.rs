//! Following HTTP/2's frame boundaries in the bytes a peer sends, to see the size of its header
//! blocks (HEADERS and its CONTINUATIONs) before h2 decodes them. h2 must decode a header block
//! over `max_header_list_bytes` whole (HPACK's table has to stay in step) before it can refuse
//! the stream, and that decoding is the CPU an oversized-header flood costs; only frame
//! headers (9 bytes each) are read here, never payloads. h2 remains the judge of the protocol:
//! what this sees only counts against a connection's pace.

/// HTTP/2 frame types (RFC 9113 §6).
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
/// The END_HEADERS flag of HEADERS, PUSH_PROMISE and CONTINUATION.
const END_HEADERS: u8 = 0x4;
/// The client's connection preface, which comes before the first frame.
const PREFACE_LEN: usize = 24;

/// Where a connection's bytes are in its frames.
#[derive(Debug)]
pub(crate) struct FrameWatch {
    /// Preface bytes still to pass.
    preface: usize,
    /// The frame header being read, and how much of it has arrived.
    header: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    payload: usize,
    /// Compressed bytes of the header block in progress, if one is.
    block: Option<usize>,
}

impl FrameWatch {
    /// A watch from the first byte of an HTTP/2 connection (its preface).
    pub(crate) fn new() -> FrameWatch {
        FrameWatch { preface: PREFACE_LEN, header: [0; 9], have: 0, payload: 0, block: None }
    }

    /// Follows `bytes`; calls `ended` with the compressed size of each header block whose last
    /// frame header is in them (the sizes its frames declare; h2 refuses frames larger than
    /// its maximum frame size).
    pub(crate) fn feed(&mut self, mut bytes: &[u8], mut ended: impl FnMut(usize)) {
        let skip = self.preface.min(bytes.len());
        self.preface -= skip;
        bytes = &bytes[skip..];
        while !bytes.is_empty() {
            if self.payload > 0 {
                let skip = self.payload.min(bytes.len());
                self.payload -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            let take = (9 - self.have).min(bytes.len());
            self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            if self.have < 9 {
                return;
            }
            self.have = 0;
            let [l0, l1, l2, kind, flags, ..] = self.header;
            let length = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
            self.payload = length;
            match kind {
                HEADERS | PUSH_PROMISE => self.block = Some(length),
                CONTINUATION => self.block = Some(self.block.unwrap_or(0).saturating_add(length)),
                _ => continue,
            }
            if flags & END_HEADERS != 0
                && let Some(size) = self.block.take()
            {
                ended(size);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: usize) -> Vec<u8> {
        let mut bytes = vec![(payload >> 16) as u8, (payload >> 8) as u8, payload as u8, kind, flags, 0, 0, 0, 1];
        bytes.extend(std::iter::repeat_n(0xAB, payload));
        bytes
    }

    fn blocks(bytes: &[u8], step: usize) -> Vec<usize> {
        let mut watch = FrameWatch::new();
        let mut seen = Vec::new();
        for chunk in bytes.chunks(step.max(1)) {
            watch.feed(chunk, |size| seen.push(size));
        }
        seen
    }

    #[test]
    fn header_blocks_are_measured_across_frames_and_reads() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, 0, 6)); // SETTINGS
        bytes.extend(frame(HEADERS, END_HEADERS, 40));
        bytes.extend(frame(0x0, 0x1, 100)); // DATA
        bytes.extend(frame(HEADERS, 0, 16_384));
        bytes.extend(frame(CONTINUATION, 0, 16_384));
        bytes.extend(frame(CONTINUATION, END_HEADERS, 1_000));
        bytes.extend(frame(0x3, 0, 4)); // RST_STREAM
        for step in [1, 7, 9, 1024, bytes.len()] {
            assert_eq!(blocks(&bytes, step), vec![40, 33_768], "read {step} bytes at a time");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_followed_without_a_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            step in 1usize..512,
        ) {
            proptest::prop_assert!(blocks(&bytes, step).len() <= bytes.len() / 9);
        }
    }
}
