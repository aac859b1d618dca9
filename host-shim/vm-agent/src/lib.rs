//! The wire format between the host and the VM agent (`paperclip-vm-agent`), in one place for
//! both sides: the request the host writes on the agent's stdin, and the frames the agent writes
//! on its stdout.
//!
//! A durable execution is one *run*: the agent takes the request, stores the command's stdin on
//! the VM, starts the command detached from the SSH session (a keeper process in a session of
//! its own spools its output and exit status under `~/.cache/paperclip-exe-dev/runs/<id>/`),
//! and streams the spool back. When the connection dies, the command goes on; the host
//! reconnects and *attaches* to the same run from the byte offsets it already holds, so every
//! byte arrives exactly once. The host acknowledges the final frame with [`ACK`], and only then
//! is the spool removed.
//!
//! Request (host → agent, stdin): a fixed [`HEADER_LEN`]-byte header, the script, then
//! `stdin_len` bytes of the command's stdin, then (later) one [`ACK`] byte.
//!
//! Frames (agent → host, stdout): `kind: u8`, `len: u32` big-endian, `len` payload bytes.

/// First bytes of every request.
pub const MAGIC: [u8; 4] = *b"PCA1";

/// Size of the request header.
pub const HEADER_LEN: usize = 4 + 1 + 8 * 5 + 4 + 8;

/// Largest script the agent accepts (exe.dev's API limits a command line to far less).
pub const MAX_SCRIPT: u32 = 16 << 20;

/// The payload of the agent's first frame, [`kind::HELLO`]: names the protocol. The host looks
/// for this exact frame, so what a login shell may print before the agent starts (a banner from
/// `~/.bashrc`, exe.dev's onboarding text) is told apart from the agent's stream.
pub const HELLO: &[u8] = b"paperclip-vm-agent/1";

/// The bytes of the hello frame.
pub fn hello_frame() -> Vec<u8> {
    frame(kind::HELLO, HELLO)
}

/// Largest payload of one output frame.
pub const MAX_CHUNK: usize = 64 * 1024;

/// The byte the host sends once it holds the final frame: the spool may go.
pub const ACK: u8 = b'A';

/// Where the agent keeps its files on the VM, relative to `$HOME`.
pub const AGENT_DIR: &str = ".cache/paperclip-exe-dev";

/// The environment variable that marks every process of a run (so a deadline or a cancel finds
/// the whole tree, even processes that left its process group).
pub const RUN_MARKER_VAR: &str = "PAPERCLIP_AGENT_RUN";

/// What the host asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Start the run (unless it already started) and stream it.
    Run,
    /// Stream a run that started earlier, from the given offsets; answers [`kind::NOT_STARTED`]
    /// when it never started.
    Attach,
}

impl Op {
    fn byte(self) -> u8 {
        match self {
            Op::Run => b'R',
            Op::Attach => b'T',
        }
    }

    fn from_byte(b: u8) -> Option<Op> {
        match b {
            b'R' => Some(Op::Run),
            b'T' => Some(Op::Attach),
            _ => None,
        }
    }
}

/// The request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Run or attach.
    pub op: Op,
    /// The run's id, chosen by the host (random, unique per execute).
    pub id: u64,
    /// Bytes of stdout the host already holds.
    pub stdout_offset: u64,
    /// Bytes of stderr the host already holds.
    pub stderr_offset: u64,
    /// The command's deadline, from its start on the VM.
    pub timeout_ms: u64,
    /// Cap of each output stream: bytes past it are neither kept nor sent.
    pub cap: u64,
    /// Length of the script that follows the header (`sh -c <script>`).
    pub script_len: u32,
    /// Length of the command's stdin that follows the script.
    pub stdin_len: u64,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// Not this protocol (or another version of it).
    BadMagic,
    /// An operation this agent does not know.
    UnknownOp(u8),
    /// The script is longer than [`MAX_SCRIPT`].
    ScriptTooLong(u32),
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::BadMagic => f.write_str("not a paperclip-vm-agent request (bad magic)"),
            HeaderError::UnknownOp(b) => write!(f, "unknown operation byte {b:#04x}"),
            HeaderError::ScriptTooLong(n) => write!(f, "script of {n} bytes is too long"),
        }
    }
}

impl Header {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = self.op.byte();
        let mut at = 5;
        for v in [
            self.id,
            self.stdout_offset,
            self.stderr_offset,
            self.timeout_ms,
            self.cap,
        ] {
            out[at..at + 8].copy_from_slice(&v.to_be_bytes());
            at += 8;
        }
        out[at..at + 4].copy_from_slice(&self.script_len.to_be_bytes());
        at += 4;
        out[at..at + 8].copy_from_slice(&self.stdin_len.to_be_bytes());
        out
    }

    /// Parse a header.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Header, HeaderError> {
        if bytes[..4] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let op = Op::from_byte(bytes[4]).ok_or(HeaderError::UnknownOp(bytes[4]))?;
        let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
        let script_len = u32::from_be_bytes(bytes[45..49].try_into().unwrap());
        if script_len > MAX_SCRIPT {
            return Err(HeaderError::ScriptTooLong(script_len));
        }
        Ok(Header {
            op,
            id: u64_at(5),
            stdout_offset: u64_at(13),
            stderr_offset: u64_at(21),
            timeout_ms: u64_at(29),
            cap: u64_at(37),
            script_len,
            stdin_len: u64_at(49),
        })
    }
}

/// Frame kinds (agent → host).
pub mod kind {
    /// The agent runs; payload: [`super::HELLO`]. Always the first frame.
    pub const HELLO: u8 = b'H';
    /// The command has started (now or in an earlier run); its stdin is stored whole.
    pub const STARTED: u8 = b'S';
    /// Bytes of the command's stdout, in order, from the requested offset.
    pub const STDOUT: u8 = b'O';
    /// Bytes of the command's stderr, in order, from the requested offset.
    pub const STDERR: u8 = b'E';
    /// The command ended and every byte was sent; payload: [`super::Exit`].
    pub const EXIT: u8 = b'X';
    /// Attach to a run that never started (its stdin never arrived whole): run it again.
    pub const NOT_STARTED: u8 = b'N';
    /// The agent cannot tell the outcome; payload: why, for an operator.
    pub const FAILED: u8 = b'F';
}

/// Largest frame payload of any kind.
pub const MAX_FRAME: usize = MAX_CHUNK + 4096;

/// How a command ended, as the final frame reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Exit {
    /// The exit status; `None` when the process died of a signal.
    pub code: Option<i32>,
    /// The signal number that ended the process, if it did.
    pub signal: Option<i32>,
    /// The deadline passed and the agent ended the command's process tree.
    pub timed_out: bool,
    /// stdout was longer than the cap.
    pub stdout_truncated: bool,
    /// stderr was longer than the cap.
    pub stderr_truncated: bool,
}

/// Size of an encoded [`Exit`].
pub const EXIT_LEN: usize = 4 + 4 + 1 + 1 + 1 + 1;

impl Exit {
    /// The payload bytes.
    pub fn encode(&self) -> [u8; EXIT_LEN] {
        let mut out = [0u8; EXIT_LEN];
        out[0] = u8::from(self.code.is_some());
        out[1..5].copy_from_slice(&self.code.unwrap_or(0).to_be_bytes());
        out[5..9].copy_from_slice(&self.signal.unwrap_or(0).to_be_bytes());
        out[9] = u8::from(self.timed_out);
        out[10] = u8::from(self.stdout_truncated);
        out[11] = u8::from(self.stderr_truncated);
        out
    }

    /// Parse a payload; `None` when it has the wrong size.
    pub fn decode(payload: &[u8]) -> Option<Exit> {
        let p: &[u8; EXIT_LEN] = payload.try_into().ok()?;
        let signal = i32::from_be_bytes(p[5..9].try_into().unwrap());
        Some(Exit {
            code: (p[0] == 1).then(|| i32::from_be_bytes(p[1..5].try_into().unwrap())),
            signal: (signal != 0).then_some(signal),
            timed_out: p[9] == 1,
            stdout_truncated: p[10] == 1,
            stderr_truncated: p[11] == 1,
        })
    }
}

/// The bytes of one frame.
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits a byte stream into frames, however it was cut.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

/// A frame that cannot be right: the stream is not from a compatible agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFrame(pub String);

impl FrameReader {
    /// Add bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<(u8, Vec<u8>)>, BadFrame> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let kind = self.buf[0];
        let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
        if len > MAX_FRAME {
            return Err(BadFrame(format!(
                "frame of kind {kind:#04x} claims {len} bytes"
            )));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let payload = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        Ok(Some((kind, payload)))
    }

    /// Bytes buffered that do not form a whole frame yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Serve mode: one agent per SSH connection, kept running while the connection lives, that
/// starts runs on request. An execute then costs one round trip on a channel that is already
/// open (the request out, the frames back) instead of a session of its own (a channel open, an
/// exec request, a program start, then the request).
///
/// Runs are the same runs, with the same spool and the same attach, so a command still outlives
/// its connection: a served run is kept by a thread of the serving agent, which goes on until
/// every run it started has ended, whatever happens to the connection.
///
/// Both directions carry *tagged* messages: `kind: u8`, `id: u64` big-endian (the run),
/// `len: u32` big-endian, `len` payload bytes. After the agent's hello frame (an ordinary
/// frame, [`serve::hello_frame`], so login noise is told apart as before), the agent sends the
/// frames of [`kind`] tagged with their run; the host sends [`serve::msg`] messages.
pub mod serve {
    use super::{frame, kind, BadFrame, Header, HEADER_LEN, MAX_FRAME, MAX_SCRIPT};

    /// The payload of a serving agent's hello frame.
    pub const HELLO: &[u8] = b"paperclip-vm-agent/1 serve";

    /// The session argument that makes the agent serve.
    pub const ARG: &str = "serve";

    /// The bytes of the serving agent's hello frame.
    pub fn hello_frame() -> Vec<u8> {
        frame(kind::HELLO, HELLO)
    }

    /// Message kinds (host → agent).
    pub mod msg {
        /// Start or attach to a run; payload: the run's [`super::Header`] and its script. When
        /// the header's `stdin_len` is not zero, that many bytes of [`STDIN`] follow.
        pub const REQUEST: u8 = b'R';
        /// The next bytes of the run's stdin (at most [`super::MAX_STDIN_CHUNK`]).
        pub const STDIN: u8 = b'I';
        /// The host holds the run's exit frame: its spool may go.
        pub const ACK: u8 = b'A';
    }

    /// Largest stdin chunk the host sends in one message (so runs share the channel fairly).
    pub const MAX_STDIN_CHUNK: usize = 64 * 1024;

    /// Largest payload of a host message: a request with the longest script.
    pub const MAX_MESSAGE: usize = HEADER_LEN + MAX_SCRIPT as usize;

    /// Size of a tagged message's head.
    pub const HEAD_LEN: usize = 1 + 8 + 4;

    /// The bytes of one tagged message (or frame).
    pub fn tagged(kind: u8, id: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEAD_LEN + payload.len());
        out.push(kind);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// The payload of a [`msg::REQUEST`].
    pub fn request(header: &Header, script: &[u8]) -> Vec<u8> {
        let mut out = header.encode().to_vec();
        out.extend_from_slice(script);
        out
    }

    fn head(bytes: &[u8; HEAD_LEN]) -> (u8, u64, usize) {
        let id = u64::from_be_bytes(bytes[1..9].try_into().unwrap());
        let len = u32::from_be_bytes(bytes[9..13].try_into().unwrap()) as usize;
        (bytes[0], id, len)
    }

    /// Read one tagged message from a blocking reader: `Ok(None)` at a clean end of the
    /// stream (between messages); an error when it ends inside one or claims more than `max`.
    pub fn read_tagged(
        input: &mut impl std::io::Read,
        max: usize,
    ) -> std::io::Result<Option<(u8, u64, Vec<u8>)>> {
        let mut raw = [0u8; HEAD_LEN];
        let mut got = 0;
        while got < HEAD_LEN {
            match input.read(&mut raw[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let (kind, id, len) = head(&raw);
        if len > max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("message of kind {kind:#04x} claims {len} bytes"),
            ));
        }
        let mut payload = vec![0u8; len];
        input.read_exact(&mut payload)?;
        Ok(Some((kind, id, payload)))
    }

    /// Splits a stream of tagged frames, however it was cut (the host's side).
    #[derive(Debug, Default)]
    pub struct TaggedReader {
        buf: Vec<u8>,
        at: usize,
    }

    impl TaggedReader {
        /// Add bytes read from the stream.
        pub fn push(&mut self, bytes: &[u8]) {
            if self.at > 0 && self.at == self.buf.len() {
                self.buf.clear();
                self.at = 0;
            }
            self.buf.extend_from_slice(bytes);
        }

        /// The next whole frame `(kind, run id, payload)`, if one is buffered.
        pub fn next_frame(&mut self) -> Result<Option<(u8, u64, Vec<u8>)>, BadFrame> {
            let rest = &self.buf[self.at..];
            let Some(raw) = rest.first_chunk::<HEAD_LEN>() else {
                return Ok(None);
            };
            let (kind, id, len) = head(raw);
            if len > MAX_FRAME {
                return Err(BadFrame(format!(
                    "frame of kind {kind:#04x} claims {len} bytes"
                )));
            }
            if rest.len() < HEAD_LEN + len {
                return Ok(None);
            }
            let payload = rest[HEAD_LEN..HEAD_LEN + len].to_vec();
            self.at += HEAD_LEN + len;
            if self.at > (1 << 20) {
                // Drop what was consumed now and then, not at every frame.
                self.buf.drain(..self.at);
                self.at = 0;
            }
            Ok(Some((kind, id, payload)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_refusals() {
        let h = Header {
            op: Op::Attach,
            id: 0x0123_4567_89ab_cdef,
            stdout_offset: 5,
            stderr_offset: u64::MAX,
            timeout_ms: 14_400_000,
            cap: 32 << 20,
            script_len: 77,
            stdin_len: 8 << 20,
        };
        assert_eq!(Header::decode(&h.encode()), Ok(h.clone()));
        let mut bad = h.encode();
        bad[0] = b'X';
        assert_eq!(Header::decode(&bad), Err(HeaderError::BadMagic));
        let mut bad = h.encode();
        bad[4] = b'?';
        assert_eq!(Header::decode(&bad), Err(HeaderError::UnknownOp(b'?')));
        let long = Header {
            script_len: MAX_SCRIPT + 1,
            ..h
        };
        assert_eq!(
            Header::decode(&long.encode()),
            Err(HeaderError::ScriptTooLong(MAX_SCRIPT + 1))
        );
    }

    #[test]
    fn exit_round_trip() {
        for e in [
            Exit::default(),
            Exit {
                code: Some(-1),
                signal: None,
                timed_out: true,
                stdout_truncated: true,
                stderr_truncated: false,
            },
            Exit {
                code: None,
                signal: Some(9),
                ..Exit::default()
            },
        ] {
            assert_eq!(Exit::decode(&e.encode()), Some(e));
        }
        assert_eq!(Exit::decode(&[0; 3]), None);
    }

    #[test]
    fn frames_survive_any_cut() {
        let mut stream = frame(kind::HELLO, b"v1");
        stream.extend(frame(kind::STDOUT, &[0, 255, 10]));
        stream.extend(frame(kind::EXIT, &Exit::default().encode()));
        for cut in 0..stream.len() {
            let mut r = FrameReader::default();
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                r.push(part);
                while let Some(f) = r.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert_eq!(got[1], (kind::STDOUT, vec![0, 255, 10]));
            assert_eq!(r.pending(), 0);
        }
        let mut r = FrameReader::default();
        r.push(&[kind::STDOUT, 0xff, 0xff, 0xff, 0xff]);
        assert!(r.next_frame().is_err());
    }

    #[test]
    fn tagged_messages_survive_any_cut() {
        use serve::{read_tagged, tagged, TaggedReader};
        let mut stream = tagged(kind::STARTED, 7, b"");
        stream.extend(tagged(kind::STDOUT, u64::MAX, &[0, 255, 10]));
        stream.extend(tagged(kind::EXIT, 7, &Exit::default().encode()));
        for cut in 0..stream.len() {
            let mut r = TaggedReader::default();
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                r.push(part);
                while let Some(f) = r.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert_eq!(got[1], (kind::STDOUT, u64::MAX, vec![0, 255, 10]));
        }
        let mut blocking = &stream[..];
        let mut ids = Vec::new();
        while let Some((_, id, _)) = read_tagged(&mut blocking, 64).unwrap() {
            ids.push(id);
        }
        assert_eq!(ids, [7, u64::MAX, 7]);
        // Cut inside a message, or over the limit: errors, never a short message.
        assert!(read_tagged(&mut &stream[..5], 64).is_err());
        assert!(read_tagged(&mut &stream[13..13 + 15], 64).is_err());
        assert!(read_tagged(&mut &tagged(kind::STDOUT, 1, &[0; 65])[..], 64).is_err());
        let mut r = TaggedReader::default();
        r.push(&[kind::STDOUT, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
        assert!(r.next_frame().is_err());
    }
}
