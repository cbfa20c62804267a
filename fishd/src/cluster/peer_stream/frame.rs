//! Frames on a peer stream: building them in place, and cutting a byte stream back
//! into them (the layout is in the parent module's docs).

use bytes::{Buf, Bytes, BytesMut};
use serde::Serialize;

use super::{HEADER, MAX_FRAME};

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Answered at once, with an empty body: liveness of the stream itself.
    Ping = 0,
    /// `AppendEntriesRequest` → `Result<AppendEntriesResponse, RaftError>`.
    Append = 1,
    /// `VoteRequest` → `Result<VoteResponse, RaftError>`.
    Vote = 2,
    /// `Vec<Proposal>` → `Vec<Result<Applied, String>>`, after their commit.
    WriteBatch = 3,
    /// An answer only: the request failed (body: why, UTF-8).
    Fail = 255,
}

impl Kind {
    pub(super) fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Ping,
            1 => Kind::Append,
            2 => Kind::Vote,
            3 => Kind::WriteBatch,
            255 => Kind::Fail,
            _ => return None,
        })
    }
}

/// A frame that cannot be read or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FrameError {
    /// A body over [`MAX_FRAME`], found before it is buffered or sent: a peer cannot make
    /// a node hold an unbounded frame, and nothing is sent that the other side refuses.
    #[error("a frame of {0} bytes is over the limit of {MAX_FRAME}")]
    TooLarge(usize),
    /// The value could not be written as postcard; nothing is sent (a server answers the
    /// request with a [`Kind::Fail`] instead).
    #[error("cannot encode a frame: {0}")]
    Encode(String),
}

/// A frame being built: its header is filled in by [`FrameBuf::finish`] and the id by
/// the link, so the body is encoded once, in place.
pub struct FrameBuf(Vec<u8>);

impl FrameBuf {
    /// An empty frame, with room for the header.
    pub fn new() -> Self {
        FrameBuf(vec![0; HEADER])
    }

    /// The body so far, to append to.
    pub fn body_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }

    /// A frame of `kind` holding `value` in postcard.
    pub fn encode<T: Serialize>(kind: Kind, value: &T) -> Result<Vec<u8>, FrameError> {
        let buf = postcard::to_extend(value, FrameBuf::new().0).map_err(|e| FrameError::Encode(e.to_string()))?;
        FrameBuf(buf).finish(kind)
    }

    /// The frame's bytes, with `len` and `kind` set (id 0 until the link sets it).
    pub fn finish(mut self, kind: Kind) -> Result<Vec<u8>, FrameError> {
        let len = self.0.len() - HEADER;
        let len32 = u32::try_from(len).ok().filter(|&l| l as usize <= MAX_FRAME).ok_or(FrameError::TooLarge(len))?;
        self.0[0..4].copy_from_slice(&len32.to_le_bytes());
        self.0[12] = kind as u8;
        Ok(self.0)
    }
}

impl Default for FrameBuf {
    fn default() -> Self {
        Self::new()
    }
}

pub(super) fn set_id(frame: &mut [u8], id: u64) {
    frame[4..12].copy_from_slice(&id.to_le_bytes());
}

/// A whole frame from raw parts (answers; the body is copied).
pub(super) fn frame(id: u64, kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER + body.len());
    f.extend_from_slice(&(body.len().min(MAX_FRAME) as u32).to_le_bytes());
    f.extend_from_slice(&id.to_le_bytes());
    f.push(kind as u8);
    f.extend_from_slice(&body[..body.len().min(MAX_FRAME)]);
    f
}

/// One frame read from a stream.
#[derive(Debug)]
pub struct Frame {
    /// The request's id, which its answer carries back: answers come in the order they
    /// are ready, not the order asked. 0 is the stream's own (see the module).
    pub id: u64,
    /// The raw kind (an unknown one is answered with a failure, not dropped).
    pub kind: u8,
    /// Split off the received bytes, not copied: a large append or answer is handed on
    /// (to its decoder, or to the waiting caller) without another copy.
    pub body: Bytes,
}

/// Most a [`Decoder`] reserves for a frame beyond the bytes that arrived; a larger
/// frame's buffer grows as its bytes come.
const RESERVE_AHEAD: usize = 1024 * 1024;

/// Splits a byte stream, in chunks as they come, into frames.
#[derive(Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    /// Adds a chunk as it arrives. The transport cuts the stream anywhere, so a frame may
    /// span chunks: bytes wait here until [`Decoder::next_frame`] finds a whole one.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole frame, if it has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let mut head = &self.buf[..HEADER];
        let len = head.get_u32_le() as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if self.buf.len() < HEADER + len {
            // Room for what is announced, but no more than RESERVE_AHEAD before the
            // bytes arrive: a header alone must not pin 64 MiB (a peer that vanished
            // mid-frame would hold it as long as its stream lives).
            self.buf.reserve((HEADER + len - self.buf.len()).min(RESERVE_AHEAD));
            return Ok(None);
        }
        let mut head = self.buf.split_to(HEADER);
        head.advance(4);
        let id = head.get_u64_le();
        let kind = head.get_u8();
        let body = self.buf.split_to(len).freeze();
        Ok(Some(Frame { id, kind, body }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request(id: u64, kind: Kind, body: &[u8]) -> Vec<u8> {
        let mut f = FrameBuf::new();
        f.body_mut().extend_from_slice(body);
        let mut f = f.finish(kind).unwrap();
        set_id(&mut f, id);
        f
    }

    /// A header announcing a large body reserves a bounded buffer until the body comes,
    /// and the frame still decodes whole once it has.
    #[test]
    fn a_large_frame_is_buffered_as_it_arrives() {
        let body = vec![7u8; 8 * RESERVE_AHEAD];
        let frame = request(9, Kind::Append, &body);
        let mut d = Decoder::default();
        d.push(&frame[..HEADER]);
        assert!(d.next_frame().unwrap().is_none());
        assert!(d.buf.capacity() <= HEADER + 2 * RESERVE_AHEAD, "reserved {} bytes ahead", d.buf.capacity());
        d.push(&frame[HEADER..]);
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!((f.id, f.kind, f.body.len()), (9, Kind::Append as u8, body.len()));
    }

    /// Frames written back to back come out whole and in order, however the bytes are
    /// cut into chunks on the way.
    #[test]
    fn frames_cut_anywhere_decode_whole() {
        let frames: Vec<Vec<u8>> = (1..=20u64)
            .map(|i| {
                request(
                    i,
                    if i.is_multiple_of(2) { Kind::Vote } else { Kind::WriteBatch },
                    &vec![i as u8; i as usize * 37],
                )
            })
            .collect();
        let all: Vec<u8> = frames.concat();
        for cut in [1, 2, 7, 13, 64, 1000, all.len()] {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for chunk in all.chunks(cut) {
                d.push(chunk);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got.len(), 20, "cut {cut}");
            for (i, f) in got.iter().enumerate() {
                let n = i as u64 + 1;
                assert_eq!(f.id, n);
                assert_eq!(f.kind, if n.is_multiple_of(2) { Kind::Vote as u8 } else { Kind::WriteBatch as u8 });
                assert_eq!(&f.body[..], &vec![n as u8; n as usize * 37][..]);
            }
        }
    }

    /// A length over the limit is refused from the header alone (not buffered), and a
    /// frame that large is not built.
    #[test]
    fn a_frame_over_the_limit_is_refused() {
        let mut d = Decoder::default();
        let mut head = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        head.extend_from_slice(&[0; 9]);
        d.push(&head);
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge(n)) if n == MAX_FRAME + 1));
        let mut f = FrameBuf::new();
        f.body_mut().resize(HEADER + MAX_FRAME + 1, 0);
        assert!(matches!(f.finish(Kind::Append), Err(FrameError::TooLarge(_))));
    }

    /// A frame encoded in place reads back as the value.
    #[test]
    fn an_encoded_frame_holds_its_value() {
        let value = vec![Ok::<u64, String>(7), Err("no".into())];
        let mut f = FrameBuf::encode(Kind::WriteBatch, &value).unwrap();
        set_id(&mut f, 42);
        let mut d = Decoder::default();
        d.push(&f);
        let got = d.next_frame().unwrap().unwrap();
        assert_eq!((got.id, got.kind), (42, Kind::WriteBatch as u8));
        assert_eq!(postcard::from_bytes::<Vec<Result<u64, String>>>(&got.body).unwrap(), value);
        assert!(d.next_frame().unwrap().is_none());
    }
}
