//! The instance channel: length-prefixed frames over a Unix socket pair.
//!
//! A frame is `len: u32 | kind: u8 | id: u32 | meta_len: u32 | meta | body`, all integers
//! big-endian, `len` counting everything after itself. `id` names the invocation a frame
//! belongs to (0 = the instance itself), so one channel can carry concurrent invocations.
//! `meta` is small and kind-specific (JSON for invoke/result, a level name for logs); `body`
//! is raw bytes (the event, the result, a log line), never re-encoded, so payloads cross the
//! channel without base64 or JSON escaping. The shims in `shims/` implement the other end.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use model::limits;

/// What a frame means. The numbers are the wire values shared with the shims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Host → instance: run the handler. meta = JSON {request_id, deadline_ms}, body = event.
    Invoke = 1,
    /// Instance → host: the handler returned. meta = `json` | `text` | `bytes`, body = value.
    Result = 2,
    /// Instance → host: the handler failed. body = JSON {errorType, errorMessage, stackTrace}.
    Error = 3,
    /// Instance → host: a log line. meta = level or stream name, body = the line.
    Log = 4,
    /// Instance → host, once: the handler is loaded and the instance takes invocations.
    Ready = 5,
    /// Instance → host, once: loading the handler failed (body as for `Error`); it exits.
    InitError = 6,
    /// Host → instance: serve a web request. meta = JSON {method, path, query, headers,
    /// remote_addr, request_id, deadline_ms}, body = the request body.
    Request = 7,
    /// Instance → host: the response head. meta = JSON {status, headers: [[name, value]]}.
    ResponseHead = 8,
    /// Instance → host: a piece of the response body.
    ResponseChunk = 9,
    /// Instance → host: the response is complete.
    ResponseEnd = 10,
    /// Host → instance, once before the first call: run the initializer hook.
    /// meta = JSON {handler, request_id, deadline_ms}; answered by `Result` or `Error`.
    Initialize = 11,
    /// Host → instance, before it is stopped: run the pre-stop hook (meta as above).
    PreStop = 12,
    /// Host → stem cell, once: become an instance. meta = JSON {env: [[k, v]], cwd}; the
    /// instance answers with `Ready` or `InitError` as if just started.
    Specialize = 13,
    /// Host → instance: answer with an empty `Result`. Frames the instance sent before the
    /// answer (log lines) have been read when it arrives: a barrier across the channel.
    Ping = 14,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Invoke,
            2 => Kind::Result,
            3 => Kind::Error,
            4 => Kind::Log,
            5 => Kind::Ready,
            6 => Kind::InitError,
            7 => Kind::Request,
            8 => Kind::ResponseHead,
            9 => Kind::ResponseChunk,
            10 => Kind::ResponseEnd,
            11 => Kind::Initialize,
            12 => Kind::PreStop,
            13 => Kind::Specialize,
            14 => Kind::Ping,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug)]
pub struct Frame {
    pub kind: Kind,
    pub id: u32,
    pub meta: Bytes,
    pub body: Bytes,
}

const HEADER_BYTES: usize = 4 + 1 + 4 + 4;

/// Encodes a frame header; the caller writes `meta` and `body` after it, so the body is
/// never copied into a new buffer.
pub fn header(kind: Kind, id: u32, meta_len: usize, body_len: usize) -> [u8; HEADER_BYTES] {
    let len = (1 + 4 + 4 + meta_len + body_len) as u32;
    let mut h = [0u8; HEADER_BYTES];
    h[0..4].copy_from_slice(&len.to_be_bytes());
    h[4] = kind as u8;
    h[5..9].copy_from_slice(&id.to_be_bytes());
    h[9..13].copy_from_slice(&(meta_len as u32).to_be_bytes());
    h
}

/// Why the channel could not be read. Any of these ends the instance.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads frames from the instance side of the channel.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// The next frame, or `None` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Frame>, ProtocolError> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
                if len > limits::FRAME_BYTES_MAX {
                    return Err(ProtocolError::TooLarge(len));
                }
                if len < 9 {
                    return Err(ProtocolError::Malformed("length shorter than the header"));
                }
                if self.buf.len() >= 4 + len {
                    self.buf.advance(4);
                    let mut frame = self.buf.split_to(len).freeze();
                    let kind = frame.get_u8();
                    let id = frame.get_u32();
                    let meta_len = frame.get_u32() as usize;
                    if meta_len > frame.len() {
                        return Err(ProtocolError::Malformed("meta longer than the frame"));
                    }
                    let meta = frame.split_to(meta_len);
                    let kind = Kind::from_u8(kind).ok_or(ProtocolError::UnknownKind(kind))?;
                    return Ok(Some(Frame {
                        kind,
                        id,
                        meta,
                        body: frame,
                    }));
                }
                self.buf.reserve(4 + len - self.buf.len());
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ProtocolError::Malformed("stream ended inside a frame"))
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(kind: Kind, id: u32, meta: &[u8], body: &[u8]) -> Vec<u8> {
        let mut v = header(kind, id, meta.len(), body.len()).to_vec();
        v.extend_from_slice(meta);
        v.extend_from_slice(body);
        v
    }

    #[tokio::test]
    async fn round_trips_frames_split_anywhere() {
        let mut wire = encode(Kind::Log, 7, b"INFO", b"hello");
        wire.extend(encode(Kind::Result, 7, b"json", &[b'x'; 100_000]));
        // A reader over a stream that yields one byte at a time still reassembles frames.
        let (mut tx, rx) = tokio::io::duplex(1);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&wire).await.unwrap();
        });
        let mut r = FrameReader::new(rx);
        let f = r.next().await.unwrap().unwrap();
        assert_eq!(
            (f.kind, f.id, &f.meta[..], &f.body[..]),
            (Kind::Log, 7, &b"INFO"[..], &b"hello"[..])
        );
        let f = r.next().await.unwrap().unwrap();
        assert_eq!((f.kind, f.body.len()), (Kind::Result, 100_000));
        assert!(r.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn rejects_bad_frames() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (u32::MAX.to_be_bytes().to_vec(), "exceeds"),
            (vec![0, 0, 0, 3, 1, 2, 3], "shorter"),
            (
                encode(Kind::Log, 1, b"", b"")[..10].to_vec(),
                "ended inside",
            ),
            (
                {
                    let mut v = encode(Kind::Log, 1, b"", b"");
                    v[4] = 99;
                    v
                },
                "unknown frame kind",
            ),
            (
                {
                    let mut v = encode(Kind::Log, 1, b"", b"");
                    v[12] = 50;
                    v
                },
                "meta longer",
            ),
        ];
        for (bytes, expect) in cases {
            let mut r = FrameReader::new(&bytes[..]);
            let err = r.next().await.unwrap_err().to_string();
            assert!(err.contains(expect), "expected `{expect}` in `{err}`");
        }
    }
}
